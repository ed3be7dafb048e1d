"""The bad-input matrix of the layerscope CLI: one table of cases, read by two users.

- ``tests/test_bad_input_matrix.py`` runs every case and checks that layerscope refuses it with exit
  code 2, one line on stderr naming the problem, and no complete-looking result in the output folder.
- ``tools/gen_reliability.py`` runs the same cases and writes ``docs/reliability.md`` with the message
  each one really printed.

A case builds its own inputs (corrupt model folders, malformed data, importance files of other models)
under a scratch folder through :class:`Workspace`, which makes every shared asset once. Cases run the CLI
in-process (``layerscope.cli.app``): a subprocess would re-import torch for each of them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
DOC = ROOT / "docs" / "reliability.md"
GENERATOR = "python3 tools/gen_reliability.py"

# Every result file a command writes; none of them may exist after a refused run.
RESULT_NAMES = (
    "importance.json",
    "block_influence.json",
    "angular_distance.json",
    "report.json",
    "trained",
    "comparison.json",
    "adapter",
    "adapter_config.json",
    "axolotl.yaml",
    "llama-factory.yaml",
    "report.html",
    "pruning_note.json",
    "model.safetensors",
    "pruning.json",  # prune-curve's, per ranking (report reads them as results)
    "curves.json",
    "table.md",
)


# ----------------------------------------------------------------------------- inputs


class Workspace:
    """Inputs shared by the cases, each built once under ``root`` on first use."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._made: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[], object]):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def case_dir(self, case_id: str) -> Path:
        d = self.root / "cases" / case_id
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    # --- models

    @property
    def stories(self) -> str:
        return str(STORIES)

    def stories_variant(self, name: str, edit: Callable[[Path], None]) -> str:
        """A copy of stories260K (files linked, not copied) that ``edit`` then changes."""

        def make() -> str:
            d = self.root / "models" / name
            d.mkdir(parents=True)
            for f in STORIES.iterdir():
                (d / f.name).symlink_to(f)
            edit(d)
            return str(d)

        return self._once(f"model:{name}", make)

    def saved_model(self, name: str, build: Callable[[], object], with_tokenizer: bool = True) -> str:
        """A tiny model built from a config and saved as safetensors (plus stories' tokenizer)."""

        def make() -> str:
            d = self.root / "models" / name
            with _quiet():
                build().save_pretrained(d, safe_serialization=True)
            if with_tokenizer:
                for f in ("tokenizer.json", "tokenizer_config.json"):
                    (d / f).symlink_to(STORIES / f)
            return str(d)

        return self._once(f"model:{name}", make)

    # --- data

    def write(self, name: str, text: str | bytes) -> str:
        path = self.root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)

    def sft_file(self) -> str:
        records = [
            {
                "instruction": f"Tell a short story about a {thing}.",
                "input": "",
                "output": f"Once upon a time there was a {thing}. It was happy and played all day.",
            }
            for thing in ("cat", "dog", "bird", "frog", "tree", "ball", "boat", "star")
        ]
        return self._once("sft", lambda: self.write("sft.json", json.dumps(records)))

    def mc_file(self, name: str, items: list[dict]) -> str:
        return self._once(f"mc:{name}", lambda: self.write(f"{name}.jsonl", "\n".join(map(json.dumps, items)) + "\n"))

    # --- importance results

    def importance(self, name: str, edit: Callable[[dict], None] | None = None, model: str = "stories") -> str:
        """A module-granularity ranking of ``model`` (stories260K, or a 3-block random llama), JSON-edited."""

        def make() -> str:
            d = dict(self._base_importance(model))
            if edit is not None:
                d = json.loads(json.dumps(d))
                edit(d)
            return self.write(f"importance/{name}.json", json.dumps(d))

        return self._once(f"importance:{name}", make)

    def _base_importance(self, model: str) -> dict:
        def make() -> dict:
            from layerscope.core.importance import LayerImportance, model_info
            from layerscope.core.layermap import build_layer_map

            if model == "stories":
                from layerscope.core.models import load_model

                net, label = load_model(STORIES).model, self.stories
            else:
                from tiny_models import tiny_model

                net, label = tiny_model("llama", n_layers=3, seed=1, vocab=512), "tiny-llama-3"
            lm = build_layer_map(net)
            players = lm.players("module")
            # a fixed, non-trivial order without ties (8 is prime to 35 and 21 players): a tied ranking warns
            scores = [float((8 * i) % len(players)) for i in range(len(players))]
            return LayerImportance(
                method="ablation",
                granularity="module",
                players=players,
                scores=scores,
                model=model_info(net, lm, label),
                seed=0,
            ).to_dict()

        return self._once(f"base-importance:{model}", make)


# ----------------------------------------------------------------------------- model edits


def _replace(d: Path, name: str, content: str | bytes) -> None:
    (d / name).unlink()
    if isinstance(content, bytes):
        (d / name).write_bytes(content)
    else:
        (d / name).write_text(content, encoding="utf-8")


def garbage_config(d: Path) -> None:
    _replace(d, "config.json", "{ this is not JSON")


def truncated_weights(d: Path) -> None:
    _replace(d, "model.safetensors", (STORIES / "model.safetensors").read_bytes()[:4096])


def pickled_only(d: Path) -> None:
    """Weights only as a pickled ``pytorch_model.bin`` (a harmless payload: layerscope must not open it)."""
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")


def tokenizer_without_special_tokens(d: Path) -> None:
    """No pad, eos or unk token: nothing to pad batches with."""
    config = json.loads((STORIES / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token", "unk_token"):
        config.pop(key, None)
    _replace(d, "tokenizer_config.json", json.dumps(config))
    tok = json.loads((STORIES / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t.get("content") not in ("</s>", "<unk>")]
    if isinstance(tok.get("model"), dict) and "unk_token" in tok["model"]:
        tok["model"]["unk_token"] = None
    _replace(d, "tokenizer.json", json.dumps(tok))


def tiny_bert():
    import transformers as tf

    cfg = tf.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=512,
        is_decoder=True,
    )
    return tf.BertLMHeadModel(cfg)


def tiny_t5():
    import transformers as tf

    return tf.T5ForConditionalGeneration(
        tf.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=512)
    )


def tiny_mamba():
    import transformers as tf

    return tf.MambaForCausalLM(tf.MambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=512, state_size=4))


def tiny_post_norm_opt():
    from tiny_models import tiny_model

    return tiny_model("opt_postnorm", n_layers=2, vocab=512)


# ----------------------------------------------------------------------------- faults injected in-process


@contextlib.contextmanager
def disk_full() -> Iterator[None]:
    """Every result file fails as it is flushed to disk, as it would on a full disk (ENOSPC).

    layerscope writes results through ``layerscope.atomic`` (temp file, fsync, rename), so a
    failing ``os.fsync`` is the moment a full disk shows: the bytes are written, not yet durable.
    """

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch("os.fsync", no_space):
        yield


@contextlib.contextmanager
def no_work_allowed() -> Iterator[None]:
    """Loading a model or starting training fails the case: the option must be refused before either."""

    def reached(*args, **kwargs):
        raise AssertionError("work started before the bad option was refused")

    import layerscope.training

    layerscope.training.finetune  # noqa: B018  (the lazy package caches it: both names must be patched)
    with (
        mock.patch("layerscope.core.models.load_model", reached),
        mock.patch("layerscope.training.finetuning.finetune", reached),
        mock.patch.object(layerscope.training, "finetune", reached),
    ):
        yield


@contextlib.contextmanager
def nan_loss_in_gate_stage() -> Iterator[None]:
    """ILA's stage 1 trains normally; every loss of stage 2 (the gates) is NaN."""
    import layerscope.methods.ila.run as ila

    real_train_gates = ila.train_gates

    def poisoned(peft_model, *args, **kwargs):
        real_forward = peft_model.forward

        def forward(*a, **kw):
            out = real_forward(*a, **kw)
            out.loss = out.loss * float("nan")
            return out

        peft_model.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
        try:
            return real_train_gates(peft_model, *args, **kwargs)
        finally:
            del peft_model.forward

    with mock.patch.object(ila, "train_gates", poisoned):
        yield


# ----------------------------------------------------------------------------- the case table


Build = Callable[[Workspace, Path], list]  # (workspace, this case's own folder) -> argv


@dataclass(frozen=True)
class Case:
    id: str
    command: str
    problem: str  # what is wrong, in words (the doc's "what is wrong" column)
    fragment: str  # must appear in the one-line error (case-insensitive)
    build: Build = field(repr=False, compare=False)
    exit_code: int = 2
    fault: Callable[[], contextlib.AbstractContextManager] | None = field(default=None, repr=False, compare=False)
    xfail: str | None = None  # known defect in the refusal (exit code / one line): the change it needs
    leaves: str | None = None  # known defect: a refused run leaves a result behind; the change it needs


@contextlib.contextmanager
def _without_module(name: str) -> Iterator[None]:
    """``import name`` fails inside; only that entry of sys.modules is restored after (mock.patch.dict
    restores the whole dict, dropping every module first imported inside: imported twice later)."""
    saved = sys.modules.get(name)
    sys.modules[name] = None
    try:
        yield
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved


def _out(d: Path) -> str:
    return str(d / "out")


MC_OK = [
    {"query": "Question: What do cats say?\nAnswer:", "choices": ["meow", "moo"], "gold": 0},
    {"query": "Question: What do cows say?\nAnswer:", "choices": ["meow", "moo"], "gold": 1},
]
MC_GOLD_OUT_OF_RANGE = MC_OK[:1] + [dict(MC_OK[1], gold=7)]
MC_WRONG_FIELDS = [{"question": "What do cats say?", "options": ["meow", "moo"], "answer": 0}]


def _rename_block(d: dict, old: int = 4, new: int = 9) -> None:
    d["players"] = [p.replace(f"layers.{old}.", f"layers.{new}.") for p in d["players"]]


def _fingerprint(d: dict) -> None:
    d["model"]["fingerprint"] = "0123456789abcdef"


def _schema(d: dict) -> None:
    d["schema_version"] = 99


def _fingerprint_same(d: dict) -> None:
    """A second ranking of the same model (same fingerprint and players), scored in another order."""
    d["scores"] = list(reversed(d["scores"]))


def _out_holding(d: Path, name: str) -> str:
    """An output folder that already holds a file called ``name``."""
    out = d / "out"
    out.mkdir(parents=True, exist_ok=True)
    _file(out / name)
    return str(out)


BLOCKER_TEXT = "a file, not a folder\n"  # what a case's blocking file holds (not a result left behind)


def _file(path: Path) -> str:
    path.write_text(BLOCKER_TEXT)
    return str(path)


def _adapter_folder(d: Path) -> str:
    """A folder as peft's save_pretrained leaves it: adapter weights (a stand-in file), no config needed."""
    (d / "saved_adapter").mkdir()
    _file(d / "saved_adapter" / "adapter_model.safetensors")
    return str(d / "saved_adapter")


# --- state a killed run leaves for --resume (docs/long-runs.md), damaged or from other settings


def _resumable_ablate(w: Workspace) -> list[str]:
    """An ablate run (stories260K, two MC items, blocks) whose coalition log the resume cases damage."""
    return ["--model", str(STORIES), "--no-progress", "--task", w.mc_file("ok", MC_OK), "--granularity", "block"]


def _ablate_log(w: Workspace) -> list[bytes]:
    """The lines of the coalition log a finished ``ablate`` run (``_resumable_ablate``, 1 thread) wrote; run once."""

    def make() -> list[bytes]:
        from layerscope.cli.app import main

        out = w.root / "runs" / "ablate"
        with _quiet():
            code = main(["ablate", *_resumable_ablate(w), "--threads", "1", "--out", str(out)])
        assert code == 0, "the ablate run the resume cases start from failed"
        return (out / "coalitions.jsonl").read_bytes().split(b"\n")

    return w._once("run:ablate-log", make)


def _log_in(d: Path, lines: list[bytes]) -> str:
    """An output folder holding a coalition log of these lines, as a killed run leaves it."""
    out = d / "out"
    out.mkdir()
    (out / "coalitions.jsonl").write_bytes(b"\n".join(lines))
    return str(out)


def _log_of_other_threads(lines: list[bytes]) -> list[bytes]:
    header = json.loads(lines[0])
    header["run"]["threads"] = 2  # as if run with --threads 2
    return [json.dumps(header).encode(), *lines[1:]]


def _log_not_utf8(lines: list[bytes]) -> list[bytes]:
    return [*lines[:2], b'{"removed":"2","value":\xff\xfe0.5}', *lines[3:]]  # a damaged line mid-file


def _checkpoint_in(d: Path, header: dict, cut: int = 0) -> str:
    """An output folder holding an ILA checkpoint (a stand-in tensor), its file cut short by ``cut`` bytes."""
    import torch

    from layerscope.core import checkpoint

    out = d / "out"
    path = checkpoint.save(out / "checkpoint", header, {"w": torch.arange(100.0)})
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return str(out)


STORY = ["--model", STORIES, "--no-progress"]  # every case below that loads a model loads stories260K unless it says
TRAIN = ["--max-steps", "2", "--batch-size", "2", "--seq-len", "128", "--no-progress"]  # replies fit: no cut note
ILA = [
    "--max-steps",
    "2",
    "--min-steps",
    "1",
    "--gate-steps",
    "1",
    "--batch-size",
    "2",
    "--seq-len",
    "128",  # the replies of sft_file fit whole: no "reply cut" note beside the error
    "--no-progress",
]
CASES: list[Case] = [
    # ---- models
    Case(
        "model-missing",
        "eval",
        "--model names a folder that does not exist",
        "model path not found",
        lambda w, d: ["eval", "--model", d / "no-such-model", "--task", w.mc_file("ok", MC_OK), "--no-progress"],
    ),
    Case(
        "model-config-garbage",
        "eval",
        "the model folder's config.json is not JSON",
        "cannot read model config",
        lambda w, d: [
            "eval",
            "--model",
            w.stories_variant("garbage-config", garbage_config),
            "--task",
            w.mc_file("ok", MC_OK),
            "--no-progress",
        ],
    ),
    Case(
        "model-weights-truncated",
        "ablate",
        "model.safetensors is cut off after 4 KiB",
        "cannot read the .safetensors weights",
        lambda w, d: [
            "ablate",
            "--model",
            w.stories_variant("truncated", truncated_weights),
            "--task",
            w.mc_file("ok", MC_OK),
            "--out",
            _out(d),
            "--no-progress",
        ],
    ),
    Case(
        "gguf-not-a-model",
        "eval",
        "--model is a .gguf file holding text, not a GGUF model",
        "not a GGUF file",
        lambda w, d: [
            "eval",
            "--model",
            w.write("fake.gguf", "just some text\n"),
            "--task",
            w.mc_file("ok", MC_OK),
            "--no-progress",
        ],
    ),
    Case(
        "pickled-checkpoint",
        "shapley",
        "the model folder has only a pickled pytorch_model.bin (unsafe to load)",
        "pickled .bin checkpoints are not loaded",
        lambda w, d: [
            "shapley",
            "--model",
            w.stories_variant("pickled", pickled_only),
            "--task",
            w.mc_file("ok", MC_OK),
            "--out",
            _out(d),
            "--no-progress",
        ],
    ),
    Case(
        "encoder-only-model",
        "similarity",
        "--model is a BERT (an encoder, even with a causal-LM head)",
        "is an encoder",
        lambda w, d: [
            "similarity",
            "--model",
            w.saved_model("bert", tiny_bert),
            "--data",
            w.sft_file(),
            "--out",
            _out(d),
            "--no-progress",
        ],
    ),
    Case(
        "encoder-decoder-model",
        "ila",
        "--model is a T5 (encoder-decoder, not a causal LM)",
        "encoder-decoder",
        lambda w, d: ["ila", "--model", w.saved_model("t5", tiny_t5), "--data", w.sft_file(), "--out", _out(d), *ILA],
    ),
    Case(
        "model-without-attention",
        "ablate",
        "a causal LM whose blocks have no attention / MLP sub-layers (Mamba)",
        "has no attention sub-module",
        lambda w, d: [
            "ablate",
            "--model",
            w.saved_model("mamba", tiny_mamba),
            "--task",
            w.mc_file("ok", MC_OK),
            "--granularity",
            "sublayer",
            "--out",
            _out(d),
            "--no-progress",
        ],
    ),
    Case(
        "tokenizer-without-pad",
        "eval",
        "the tokenizer has no pad token (stories260K as shipped): works, batches are padded with eos "
        "(models.prepare_tokenizer; padded positions are masked, so the pad id never changes a result)",
        "acc",
        exit_code=0,
        build=lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK)],
    ),
    Case(
        "eval-one-item",
        "eval",
        "an MC file of one item: no standard error to print (it printed acc 0.0000 ± nan)",
        "(1 item: no standard error)",
        exit_code=0,
        build=lambda w, d: ["eval", *STORY, "--task", w.mc_file("one_item", MC_OK[:1])],
    ),
    Case(
        "tokenizer-without-pad-eos-unk",
        "eval",
        "the tokenizer has no pad, eos or unk token to pad with",
        "no pad, eos or unk token",
        lambda w, d: [
            "eval",
            "--model",
            w.stories_variant("no-specials", tokenizer_without_special_tokens),
            "--task",
            w.mc_file("ok", MC_OK),
            "--no-progress",
        ],
    ),
    # ---- data
    Case(
        "sft-wrong-fields",
        "ila",
        "SFT records have fields of no known format (question/answer)",
        "unrecognised record fields",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.write("wrong_fields.json", json.dumps([{"question": "Hi?", "answer": "Hello."}] * 4)),
            "--out",
            _out(d),
            *ILA[:-1],
        ],
    ),
    Case(
        "sft-empty-file",
        "finetune",
        "--data is an empty file",
        "empty file, no records",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.write("empty.json", ""),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "sft-empty-list",
        "shapley",
        "loss:<file> holds an empty JSON list",
        "empty list, no records",
        lambda w, d: ["shapley", *STORY, "--task", "loss:" + w.write("empty_list.json", "[]"), "--out", _out(d)],
    ),
    Case(
        "sft-all-truncated-ila",
        "ila",
        "--max-length 8 cuts every response off (only prompt tokens remain)",
        "no examples left with response tokens",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-3], "--max-length", "8"],
    ),
    Case(
        "sft-all-truncated-eval",
        "eval",
        "eval --data with --max-length 8 cuts every response off",
        "no examples left with response tokens",
        lambda w, d: ["eval", *STORY, "--data", w.sft_file(), "--max-length", "8"],
    ),
    Case(
        "mc-gold-out-of-range",
        "eval",
        "an MC item's gold index is 7 with 2 choices",
        "gold 7 out of range",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("gold7", MC_GOLD_OUT_OF_RANGE)],
    ),
    Case(
        "mc-wrong-fields",
        "ablate",
        "MC JSONL with question/options/answer instead of query/choices/gold",
        "missing field 'query'",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("wrong_fields", MC_WRONG_FIELDS), "--out", _out(d)],
    ),
    Case(
        "mc-numeric-choices-string-gold",
        "eval",
        'choices "1".."4" with gold "2": the text of choice 1 or index 2? (refused, not guessed)',
        'gold "2" is both the text of choice 1 and the index 2',  # the gold as JSON spells it, not Python's '2'
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.write("numeric.jsonl", json.dumps({"query": "1+1=", "choices": ["1", "2", "3", "4"], "gold": "2"})),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "mc-dotted-choices-numeric-key",
        "eval",
        'HF ARC read through --fields choices=choices.text, labels "1".."4" beside it, answer key the number 1',
        "both the label of choice 0 and the index 1",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "arc_dotted",
                [{"question": "Q", "choices": {"text": ["dog", "cat"], "label": ["1", "2"]}, "answerKey": 1}],
            ),
            "--fields",
            "query=question,choices=choices.text,gold=answerKey",
        ],
        fault=no_work_allowed,
    ),
    Case(
        "mc-gold-choice-repeated",
        "eval",
        "an MC item whose gold choice is listed twice (which copy wins is numeric noise)",
        "the gold choice 1 is the same text as choice 0",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file("dup_gold", [{"query": "The sky is", "choices": ["blue", "blue", "red"], "gold": 1}]),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "hellaswag-gold-ending-repeated",
        "eval",
        "a HellaSwag item whose gold ending reads the same as another once cleaned as lm-eval does",
        "the gold ending 1 is the same text as ending 0",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "hs_dup",
                [{"activity_label": "A", "ctx_a": "x", "ctx_b": "y", "endings": ["b  c", "b c", "d"], "label": "1"}],
            ),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "task-json-object-not-items",
        "eval",
        "--task is a pretty-printed JSON object holding its items under a key that is no wrapper (items)",
        "a JSON object; expected JSON lines or a list of items",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.write("wrapped.json", json.dumps({"version": 1, "items": MC_OK}, indent=2)),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "task-json-object-two-splits",
        "eval",
        "--task is a JSON object with items under both train and test: which split is meant?",
        "a JSON object holding several splits (train, test)",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.write("two_splits.json", json.dumps({"train": MC_OK, "test": MC_OK}, indent=2)),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "sft-lone-surrogate",
        "eval",
        "an SFT record holding half an emoji (a lone \\ud83d escape: valid JSON, not text)",
        "surrogate pair",
        lambda w, d: [
            "eval",
            *STORY,
            "--data",
            w.write("half_emoji.jsonl", '{"instruction": "Hi \\ud83d", "output": "Hello."}\n'),
        ],
    ),
    Case(
        "unknown-task",
        "shapley",
        "--task names no known task and no file",
        "unknown task 'no_such_task'",
        lambda w, d: ["shapley", *STORY, "--task", "no_such_task", "--out", _out(d)],
    ),
    Case(
        "similarity-data-neither",
        "similarity",
        "--data is JSON that is neither SFT records nor MC items",
        "record 1 is a number, expected an object",  # JSON's names for the types, not Python's (int)
        lambda w, d: ["similarity", *STORY, "--data", w.write("numbers.json", "[1, 2, 3]"), "--out", _out(d)],
    ),
    Case(
        "similarity-bad-sft-record",
        "similarity",
        "--data holds SFT records, one of them without its reply: the SFT error alone, not 'neither ... nor'",
        "line 2: missing field 'output'",
        lambda w, d: [
            "similarity",
            *STORY,
            "--data",
            w.write("one_bad.jsonl", '{"instruction": "Hi", "output": "Hello."}\n{"instruction": "Bye"}\n'),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "sft-several-splits",
        "eval",
        "--data is one JSON object of several splits (train, validation): which one was meant is unknown",
        "a JSON object holding several splits (train, validation)",
        lambda w, d: [
            "eval",
            *STORY,
            "--data",
            w.write(
                "splits.json",
                json.dumps(
                    {
                        "train": [{"instruction": "a", "output": "b"}],
                        "validation": [{"instruction": "c", "output": "d"}],
                    }
                ),
            ),
        ],
    ),
    # ---- options
    Case(
        "granularity-bogus",
        "ablate",
        "--granularity bogus",
        "invalid choice: 'bogus'",
        lambda w, d: ["ablate", *STORY, "--granularity", "bogus", "--out", _out(d)],
    ),
    Case(
        "batch-size-0-eval",
        "eval",
        "--batch-size 0",
        "--batch-size must be >= 1",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--batch-size", "0"],
    ),
    Case(
        "batch-size-0-ablate",
        "ablate",
        "--batch-size 0",
        "--batch-size must be >= 1",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--batch-size", "0", "--out", _out(d)],
    ),
    Case(
        "coalition-batch-0-shapley",
        "shapley",
        "--coalition-batch 0",
        "--coalition-batch must be >= 1",
        lambda w, d: ["shapley", *STORY, "--task", w.mc_file("ok", MC_OK), "--coalition-batch", "0", "--out", _out(d)],
    ),
    Case(
        "batch-size-0-similarity",
        "similarity",
        "--batch-size 0",
        "--batch-size must be >= 1",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--batch-size", "0", "--out", _out(d)],
    ),
    Case(
        "batch-size-0-ila",
        "ila",
        "--batch-size 0",
        "--batch-size (batch_size) must be a positive integer",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-1], "--batch-size", "0"],
    ),
    Case(
        "batch-size-0-finetune",
        "finetune",
        "--batch-size 0",
        "--batch-size (batch_size) must be >= 1",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
            "--batch-size",
            "0",
        ],
    ),
    Case(
        "window-out-of-range",
        "similarity",
        "--window 9 on a 5-block model (block index out of range)",
        "window must be an integer in 1..5",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--window", "9", "--out", _out(d)],
    ),
    Case(
        "exact-too-many-players",
        "shapley",
        "--estimator exact over 35 module players (2**35 coalitions)",
        "exact Shapley needs 2**35",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--granularity",
            "module",
            "--estimator",
            "exact",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "permutation-without-budget",
        "shapley",
        "--estimator permutation with neither --budget nor --target-stderr",
        "needs --budget",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--estimator",
            "permutation",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "fraction-above-1",
        "finetune",
        "--fraction 1.5",
        "must be in (0, 1]",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            w.importance("stories"),
            "--fraction",
            "1.5",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "fraction-zero",
        "export",
        "--fraction 0",
        "must be in (0, 1]",
        lambda w, d: [
            "export",
            w.importance("stories"),
            "--to",
            "peft",
            "--fraction",
            "0",
            "--out",
            d / "out" / "adapter_config.json",
        ],
    ),
    Case(
        "min-block-out-of-range",
        "finetune",
        "--min-block 5 on a 5-block model",
        "--min-block 5 is out of range",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            w.importance("stories"),
            "--min-block",
            "5",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "min-block-too-high-for-fraction",
        "export",
        "--fraction 0.9 with --min-block 4 (one block left)",
        "only 7 are at or above --min-block 4",
        lambda w, d: [
            "export",
            w.importance("stories"),
            "--to",
            "peft",
            "--fraction",
            "0.9",
            "--min-block",
            "4",
            "--out",
            d / "out" / "adapter_config.json",
        ],
    ),
    Case(
        "compare-fraction-out-of-range",
        "compare",
        "--fraction 2",
        "--fraction 2 must be in (0, 1]",
        lambda w, d: [
            "compare",
            w.importance("stories"),
            w.importance("stories-b", _fingerprint_same),
            "--fraction",
            "2",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "compare-sweep-out-of-range",
        "compare",
        "--sweep 0,2,-1 (each K a fraction in (0, 1]; refused before any result is read)",
        "--sweep 0,2,-1: fraction 0 must be in (0, 1]",
        lambda w, d: [
            "compare",
            w.importance("stories"),
            w.importance("stories-b", _fingerprint_same),
            "--sweep",
            "0,2,-1",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "plot-top-out-of-range",
        "plot",
        "--top 2 on a module heatmap",
        "--top 2.0 must be in [0, 1]",
        lambda w, d: ["plot", w.importance("stories"), "--out", d / "out" / "heatmap.png", "--top", "2"],
    ),
    # ---- importance files
    Case(
        "importance-other-model",
        "finetune",
        "--importance ranks a 3-block model; the loaded model has 5 blocks",
        "ranking is for a model with 3 blocks",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            w.importance("tiny-llama", model="tiny-llama"),
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "importance-fingerprint",
        "export",
        "the ranking's weights fingerprint is not the loaded model's",
        "ranking was computed on model",
        lambda w, d: [
            "export",
            w.importance("fingerprint", _fingerprint),
            "--to",
            "axolotl",
            "--model",
            STORIES,
            "--out",
            _out(d),
        ],
    ),
    Case(
        "importance-players-out-of-range",
        "export",
        "the ranking names players of block 9; the model has 0..4",
        "not in the loaded model's layer map",
        lambda w, d: [
            "export",
            w.importance("block9", _rename_block),
            "--to",
            "peft",
            "--model",
            STORIES,
            "--out",
            _out(d),
        ],
    ),
    Case(
        "importance-corrupt-json",
        "plot",
        "importance.json is cut off mid-way (invalid JSON)",
        "invalid JSON",
        lambda w, d: [
            "plot",
            w.write("corrupt/importance.json", Path(w.importance("stories")).read_text()[:200]),
            "--out",
            d / "out" / "bar.png",
        ],
    ),
    Case(
        "importance-schema-version",
        "export",
        "importance.json has schema_version 99",
        "schema_version 99 not supported",
        lambda w, d: ["export", w.importance("schema99", _schema), "--to", "peft", "--out", _out(d)],
    ),
    Case(
        "importance-missing-fields",
        "plot",
        "importance.json is a JSON object without players / scores",
        "importance file lacks",
        lambda w, d: [
            "plot",
            w.write("lacking/importance.json", json.dumps({"schema_version": 1, "method": "x"})),
            "--out",
            d / "out" / "bar.png",
        ],
    ),
    Case(
        "importance-not-found",
        "finetune",
        "--importance names a missing file",
        "importance file not found",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            d / "missing.json",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "compare-different-models",
        "compare",
        "the two rankings come from different models",
        "results are from different models",
        lambda w, d: [
            "compare",
            w.importance("stories"),
            w.importance("tiny-llama", model="tiny-llama"),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "compare-one-result",
        "compare",
        "only one result to compare",
        "needs at least two results",
        lambda w, d: ["compare", w.importance("stories"), "--out", _out(d)],
    ),
    # ---- training
    Case(
        "nan-loss-ila",
        "ila",
        "--lr 1e30: the LoRA loss becomes NaN / inf",
        "loss became",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-1], "--lr", "1e30"],
    ),
    Case(
        "nan-loss-ila-gates",
        "ila",
        "the loss turns NaN in stage 2 (gates), after stage 1 finished",
        "loss became nan",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-1]],
        fault=nan_loss_in_gate_stage,
    ),
    Case(
        "nan-loss-finetune",
        "finetune",
        "--lr 1e30: training diverges to NaN / inf",
        "lower --lr",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--method",
            "full",
            "--out",
            _out(d),
            *TRAIN[:-1],
            "--lr",
            "1e30",
        ],
    ),
    # ---- writing
    Case(
        "disk-full-ablate",
        "ablate",
        "the disk is full: writing the results fails with ENOSPC",
        "no space left on device",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--granularity", "block", "--out", _out(d)],
        fault=disk_full,
    ),
    Case(
        "disk-full-ila",
        "ila",
        "the disk is full: writing the results fails with ENOSPC",
        "no space left on device",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-1]],
        fault=disk_full,
    ),
    Case(
        "disk-full-finetune",
        "finetune",
        "the disk is full when the adapter is saved, right after training (ENOSPC)",
        "no space left on device",
        lambda w, d: ["finetune", *STORY, "--data", w.sft_file(), "--mode", "all", "--out", _out(d), *TRAIN[:-1]],
        fault=disk_full,
    ),
    Case(
        "disk-full-export",
        "export",
        "the disk is full: writing the config fails with ENOSPC",
        "no space left on device",
        lambda w, d: ["export", w.importance("stories"), "--to", "peft", "--out", _out(d)],
        fault=disk_full,
    ),
    Case(
        "out-under-a-file",
        "similarity",
        "--out is a path below a regular file",
        "not a directory",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--out", _file(d / "blocker") + "/out"],
    ),
    # ---- resuming (--resume: docs/long-runs.md)
    Case(
        "resume-log-not-utf8",
        "shapley",
        "--resume: a line in the middle of the coalition log holds bytes that are not UTF-8 (disk damage)",
        "line 3 is not JSON; the coalition log is corrupt (delete it to start over)",
        lambda w, d: [
            "shapley",
            *_resumable_ablate(w),
            "--threads",
            "1",
            "--resume",
            "--out",
            _log_in(d, _log_not_utf8(_ablate_log(w))),
        ],
    ),
    Case(
        "resume-log-other-threads",
        "ablate",
        "--resume with --threads 1; the coalition log was computed with --threads 2 (float sums in another "
        "order: values differ in the last digits)",
        "resume with --threads 2",
        lambda w, d: [
            "ablate",
            *_resumable_ablate(w),
            "--threads",
            "1",
            "--resume",
            "--out",
            _log_in(d, _log_of_other_threads(_ablate_log(w))),
        ],
    ),
    Case(
        "resume-checkpoint-truncated",
        "ila",
        "--resume from OUT/checkpoint/state.safetensors cut short (a copy or a disk that gave out)",
        "checkpoint unreadable",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.sft_file(),
            *ILA,
            "--resume",
            "--out",
            _checkpoint_in(d, {"stage": "lora", "step": 2}, cut=40),
        ],
    ),
    Case(
        "resume-checkpoint-other-threads",
        "ila",
        "--resume with --threads 1 from a checkpoint written with --threads 2",
        "resume with --threads 2, or run without --resume",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.sft_file(),
            *ILA,
            "--threads",
            "1",
            "--resume",
            "--out",
            _checkpoint_in(d, {"stage": "lora", "step": 2, "threads": 2}),
        ],
    ),
    # ---- result levels and folders of several results (compare / plot)
    Case(
        "compare-finer-level",
        "compare",
        "--level module with a block-level ranking among the results (aggregation only goes coarser)",
        "cannot refine a block-level",
        lambda w, d: [
            "compare",
            w.importance("stories"),
            w.importance("stories-blocks", _to_blocks),
            "--level",
            "module",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "compare-folder-without-results",
        "compare",
        "a folder with no importance.json in it or in its subfolders",
        "no importance results",
        lambda w, d: ["compare", w.importance("stories"), _no_results(w), "--out", _out(d)],
    ),
    Case(
        "plot-folder-without-results",
        "plot",
        "a folder with no importance.json in it or in its subfolders",
        "no importance results",
        lambda w, d: ["plot", _no_results(w), "--out", _out(d)],
    ),
    # ---- the data and models people bring (compressed, binary, prompt-only, misplaced files)
    Case(
        "data-csv",
        "eval",
        "--data is a CSV file (SFT data is read from JSON / JSON Lines)",
        "CSV is not a supported SFT data format",
        lambda w, d: ["eval", *STORY, "--data", w.write("sft.csv", "instruction,output\nSay hi.,Hi.\n")],
    ),
    Case(
        "data-gzip-truncated",
        "finetune",
        "--data is a .jsonl.gz cut off mid-stream",
        "gzip file is truncated or corrupt",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.write("cut.jsonl.gz", _gzip_cut()),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "data-prompt-only",
        "ila",
        "--data holds prompts without replies ({prompt} records): nothing to train on",
        "prompts only",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.write("prompts.json", json.dumps([{"prompt": "What is 2+2?"}, {"prompt": "Name a colour."}])),
            "--out",
            _out(d),
            *ILA[:-1],
        ],
    ),
    Case(
        "data-user-turns-only",
        "shapley",
        "loss:<file> whose conversations have user turns and no assistant reply",
        "no record has a non-empty reply",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            "loss:" + w.write("questions.json", json.dumps([{"messages": [{"role": "user", "content": "Hi?"}]}])),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "task-zip-bytes",
        "eval",
        "--task names a .jsonl file that is really a zip archive",
        "a zip archive, not JSON",
        lambda w, d: ["eval", *STORY, "--task", w.write("zipped.jsonl", b"PK\x03\x04\x14\x00rest of a zip")],
    ),
    Case(
        "task-gzip-truncated",
        "ablate",
        "--task is a .jsonl.gz cut off mid-stream",
        "gzip file is truncated or corrupt",
        lambda w, d: ["ablate", *STORY, "--task", w.write("cut-task.jsonl.gz", _gzip_cut()), "--out", _out(d)],
    ),
    Case(
        "task-is-sft-file",
        "eval",
        "--task is an SFT file (alpaca records), not multiple-choice items",
        "give SFT data as --data",
        lambda w, d: ["eval", *STORY, "--task", w.sft_file()],
    ),
    Case(
        "task-empty-folder",
        "shapley",
        "--task is a folder with no task files in it",
        "a folder with no task files",
        lambda w, d: ["shapley", *STORY, "--task", _empty_folder(d), "--out", _out(d)],
    ),
    Case(
        "model-folder-without-weights",
        "eval",
        "the model folder has a config but no weights file at all",
        "no weights (*.safetensors)",
        lambda w, d: [
            "eval",
            "--model",
            w.stories_variant("no-weights", lambda m: (m / "model.safetensors").unlink()),
            "--task",
            w.mc_file("ok", MC_OK),
            "--no-progress",
        ],
    ),
    Case(
        "gguf-truncated",
        "eval",
        "--model is a .gguf file cut off inside its header",
        "GGUF file is truncated",
        lambda w, d: [
            "eval",
            "--model",
            w.write("cut.gguf", b"GGUF\x03\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x03\x00"),
            "--task",
            w.mc_file("ok", MC_OK),
            "--no-progress",
        ],
    ),
    Case(
        "hub-id-offline",
        "eval",
        "--model is a hub id that is not cached, with the hub unreachable (offline)",
        "the hub cannot be reached",
        lambda w, d: ["eval", "--model", "someone/no-such-model", "--task", w.mc_file("ok", MC_OK), "--no-progress"],
        fault=lambda: mock.patch("layerscope.core.model_sources.hub_reachable", return_value=False),
    ),
    Case(
        "hub-dataset-offline",
        "ila",
        "--data is a hub dataset id that is not cached, with the hub unreachable (offline)",
        "the hub cannot be reached",
        lambda w, d: ["ila", *STORY, "--data", "someone/no-such-dataset", "--out", _out(d), "--no-progress"],
        fault=lambda: mock.patch("layerscope.core.hub.hub_reachable", return_value=False),
    ),
    Case(
        "hub-dataset-without-datasets",
        "ila",
        "--data is neither a file nor loadable: a hub dataset id, and the datasets package is not installed",
        "loading hub datasets needs `pip install layerscope[hub]`",
        lambda w, d: ["ila", *STORY, "--data", "someone/no-such-dataset", "--out", _out(d), "--no-progress"],
        fault=lambda: _without_module("datasets"),
    ),
    # ---- report
    Case(
        "report-different-models",
        "report",
        "results of two different models (weights fingerprints differ) in one report",
        "results of different models in one report",
        lambda w, d: [
            "report",
            w.importance("ok"),
            w.importance("fp", _fingerprint),
            "--out",
            d / "out" / "report.html",
        ],
    ),
    Case(
        "report-empty-file",
        "report",
        "a result file that is empty",
        "empty file",
        lambda w, d: ["report", w.importance("ok"), w.write("empty.json", ""), "--out", d / "out" / "report.html"],
    ),
    Case(
        "report-corrupt-file",
        "report",
        "a result file cut off mid-JSON",
        "invalid JSON",
        lambda w, d: [
            "report",
            w.write("cut.json", '{"schema_version": 1, "method": '),
            "--out",
            d / "out" / "report.html",
        ],
    ),
    Case(
        "report-newer-schema",
        "report",
        "a result written by a newer layerscope (schema_version 99)",
        "newer than this layerscope reads",
        lambda w, d: ["report", w.importance("schema", _schema), "--out", d / "out" / "report.html"],
    ),
    Case(
        "report-folder-without-results",
        "report",
        "a folder holding no importance, fine-tuning or pruning result",
        "no importance, fine-tuning or pruning result",
        lambda w, d: ["report", _empty_folder(d), "--out", d / "out" / "report.html"],
    ),
    Case(
        "report-fraction-out-of-range",
        "report",
        "--fraction 2 (refused before any result is read)",
        "--fraction 2 must be in (0, 1]",
        lambda w, d: ["report", w.importance("stories"), "--fraction", "2", "--out", d / "out" / "report.html"],
    ),
    Case(
        "report-format-contradicts-out",
        "report",
        "--format html with --out naming a .md file (refused before any result is read)",
        "--format html writes a .html or .htm file, not .md",
        lambda w, d: ["report", w.importance("ok"), "--format", "html", "--out", d / "out" / "report.md"],
    ),
    Case(
        "report-out-not-a-report",
        "report",
        "--out names an existing file that is not a layerscope report (left as it is)",
        "exists and is not a layerscope report; --overwrite replaces it",
        lambda w, d: ["report", w.importance("ok"), "--out", _file(d / "report.html")],
    ),
    # ---- architectures whose layers cannot be removed (engine/removal_check.py, docs/architectures.md)
    Case(
        "post-norm-model",
        "ablate",
        "a post-norm model (OPT with do_layer_norm_before=False): removing a layer cannot leave the residual stream",
        "does not leave the residual stream intact",
        lambda w, d: [
            "ablate",
            "--model",
            w.saved_model("opt-postnorm", tiny_post_norm_opt),
            "--task",
            w.mc_file("ok", MC_OK),
            "--granularity",
            "block",
            "--out",
            _out(d),
            "--no-progress",
        ],
    ),
    # ---- partial scoring (several contexts, one continuation: WinoGrande, lm-eval's multiple_input)
    Case(
        "partial-fields-wrong-way-round",
        "eval",
        "--fields query=continuation,choices=contexts on a {contexts, continuation, gold} file (MC, wrong way round)",
        "the wrong way round",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "partial", [{"contexts": ["The cat sat on the mat", "The dog sat"], "continuation": "down.", "gold": 0}]
            ),
            "--fields",
            "query=continuation,choices=contexts",
        ],
    ),
    Case(
        "winogrande-test-split",
        "ablate",
        "WinoGrande records with an empty answer (its test split)",
        "test split has none",
        lambda w, d: [
            "ablate",
            *STORY,
            "--task",
            w.mc_file(
                "wg_test",
                [{"sentence": "Tom hugged Sue because _ was sad.", "option1": "Tom", "option2": "Sue", "answer": ""}],
            ),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "partial-one-context",
        "shapley",
        "a partial-scoring item with a single context",
        "contexts must be a list of at least 2 strings",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("partial_one", [{"contexts": ["The cat sat"], "continuation": "down.", "gold": 0}]),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "partial-empty-context",
        "eval",
        "a partial-scoring item with an empty context (the continuation scored after nothing)",
        "line 1: context 0 is empty",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file("partial_empty", [{"contexts": ["", "The dog"], "continuation": "barked.", "gold": 0}]),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "partial-gold-context-repeated",
        "eval",
        "a partial-scoring item whose gold context is listed twice (which copy wins is numeric noise)",
        "the gold context 1 is the same text as context 0",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file("partial_dup", [{"contexts": ["The dog", "The dog"], "continuation": "barked.", "gold": 1}]),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "winogrande-empty-option",
        "eval",
        'a WinoGrande record with option1 "" (the blank scored as nothing)',
        "line 1: option1 is empty",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "wg_empty",
                [{"sentence": "The _ barked loudly.", "option1": "", "option2": "dog", "answer": "1"}],
            ),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "winogrande-same-options",
        "eval",
        "a WinoGrande record whose two options are the same text",
        "the gold option 2 is the same text as option 1",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "wg_same",
                [{"sentence": "The _ barked loudly.", "option1": "dog", "option2": "dog", "answer": "2"}],
            ),
        ],
        fault=no_work_allowed,
    ),
    # ---- mixture of experts (granularity "expert", docs/architectures.md "Experts as players")
    Case(
        "expert-granularity-dense-model",
        "ablate",
        "--granularity expert on a model without mixture-of-experts layers (stories260K)",
        "has no mixture-of-experts layer",
        lambda w, d: [
            "ablate",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--granularity",
            "expert",
            "--out",
            _out(d),
        ],
    ),
    # ---- options used only late (after the model loads, after training) refused before any work
    Case(
        "finetune-eval-task-typo",
        "finetune",
        "--eval-tasks names an unknown task (a typo), used only after training",
        "unknown task 'arc_esay'",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--eval-tasks",
            "arc_esay",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-out-under-a-file",
        "finetune",
        "--out is a path below a regular file (written only after training)",
        "not a directory",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _file(d / "blocker") + "/out",
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-adapter-is-a-file",
        "finetune",
        "--out holds a file named adapter, where the adapter folder goes after training",
        "a file is in the way",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _out_holding(d, "adapter"),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-heldout-fraction",
        "finetune",
        "--heldout-fraction 1.5 (used once the data is tokenized)",
        "--heldout-fraction must be between 0 and 1",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--heldout-fraction",
            "1.5",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-max-steps-zero",
        "finetune",
        "--max-steps 0",
        "--max-steps (max_steps) must be >= 1, got 0",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
            "--max-steps",
            "0",
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-fraction-out-of-range",
        "finetune",
        "--fraction 1.5 (used once the ranking meets the loaded model)",
        "--fraction 1.5 must be in (0, 1]",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            w.importance("ok"),
            "--fraction",
            "1.5",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-data-missing",
        "finetune",
        "--data names a file that does not exist (read once the tokenizer is loaded)",
        "data file not found",
        lambda w, d: ["finetune", *STORY, "--data", d / "missing.json", "--mode", "all", "--out", _out(d), *TRAIN[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "ila-out-under-a-file",
        "ila",
        "--out is a path below a regular file (written after both ILA stages)",
        "not a directory",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _file(d / "blocker") + "/out", *ILA[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "ila-adapter-missing",
        "ila",
        "--adapter names a folder that does not exist",
        "no such adapter folder",
        lambda w, d: ["ila", *STORY, "--adapter", d / "nope", "--out", _out(d), *ILA[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "ila-stage1-option-with-adapter",
        "ila",
        "--rank with --adapter (stage 1 is skipped: the adapter's own rank is used)",
        "--rank: stage-1 options, but --adapter skips stage 1",
        lambda w, d: [
            "ila",
            *STORY,
            "--adapter",
            Path(w.write("lora-adapter/adapter_config.json", "{}")).parent,
            "--rank",
            "64",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "ila-lr-schedule-with-adapter",
        "ila",
        "--lr-schedule constant with --adapter (the schedule is stage 1's, which --adapter skips)",
        "--lr-schedule: stage-1 options, but --adapter skips stage 1",
        lambda w, d: [
            "ila",
            *STORY,
            "--adapter",
            Path(w.write("lora-adapter/adapter_config.json", "{}")).parent,
            "--lr-schedule",
            "constant",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "ila-min-steps-above-max-steps",
        "ila",
        "--min-steps 50 with --max-steps 2 (a step floor above the cap)",
        "--min-steps 50 is above --max-steps 2",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA[:-1], "--min-steps", "50"],
        fault=no_work_allowed,
    ),
    Case(
        "ila-max-steps-zero",
        "ila",
        "--max-steps 0",
        "--max-steps (max_steps) must be a positive integer",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), "--max-steps", "0"],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-task-typo",
        "ablate",
        "--task names an unknown task (read once the model is loaded)",
        "unknown task 'arc_esay'",
        lambda w, d: ["ablate", *STORY, "--task", "arc_esay", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-negative-margin",
        "ablate",
        "--abs-margin -1 (used only once every player is scored)",
        "--abs-margin must be >= 0",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--abs-margin", "-1", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-infinite-margin",
        "ablate",
        "--rel-margin inf (used only once every player is scored; inf passes a >= 0 check)",
        "argument --rel-margin: must be a finite number, got 'inf'",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--rel-margin", "inf", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-infinite-cache",
        "ablate",
        "--cache-mb inf, as if to say unlimited (it overflowed once the model was loaded)",
        "argument --cache-mb: must be a finite number, got 'inf'",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--cache-mb", "inf", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-cache-with-uncached",
        "ablate",
        "--uncached with --cache-mb 10 (the uncached engine caches nothing: the option would be ignored)",
        "--uncached caches nothing",
        lambda w, d: [
            "ablate",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--uncached",
            "--cache-mb",
            "10",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-out-under-a-file",
        "ablate",
        "--out is a path below a regular file (written after every player is scored)",
        "not a directory",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--out", _file(d / "blocker") + "/out"],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-loss-file-missing",
        "shapley",
        "--task loss:FILE names a file that does not exist",
        "data file not found",
        lambda w, d: ["shapley", *STORY, "--task", f"loss:{d / 'missing.json'}", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-budget-too-small",
        "shapley",
        "--estimator permutation --budget 1 (v(full) and v(empty) alone take 2)",
        "--budget 1 is too small",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--estimator",
            "permutation",
            "--budget",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-truncate-at-without-truncation",
        "shapley",
        "--truncate-at full without --truncation (it would be ignored)",
        "--truncate-at applies with --truncation",
        lambda w, d: ["shapley", *STORY, "--task", w.mc_file("ok", MC_OK), "--truncate-at", "full", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-max-window-not-proximity",
        "shapley",
        "--max-window 2 with --estimator exact (a proximity option; it would be ignored)",
        "--max-window applies to --estimator proximity, not exact",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--estimator",
            "exact",
            "--max-window",
            "2",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "similarity-window-zero",
        "similarity",
        "--window 0 (used once every block state is measured)",
        "--window must be >= 1",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--window", "0", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "similarity-limit-zero",
        "similarity",
        "--limit 0 (was refused only once the model was loaded, without naming --limit)",
        "--limit must be >= 1",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--limit", "0", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "eval-data-missing",
        "eval",
        "--data names a file that does not exist (read once the tokenizer is loaded)",
        "data file not found",
        lambda w, d: ["eval", *STORY, "--data", d / "missing.jsonl"],
        fault=no_work_allowed,
    ),
    Case(
        "eval-offload-folder-without-device-map",
        "eval",
        "--offload-folder without --device-map (nothing would be offloaded: the option would be ignored)",
        "--offload-folder applies with --device-map",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--offload-folder", d / "offload"],
        fault=no_work_allowed,
    ),
    Case(
        "threads-zero",
        "eval",
        "--threads 0",
        "--threads must be >= 1",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--threads", "0"],
        fault=no_work_allowed,
    ),
    Case(
        "export-out-under-a-file",
        "export",
        "--out is a path below a regular file, with --model (loaded before anything is written)",
        "not a directory",
        lambda w, d: [
            "export",
            w.importance("ok"),
            "--to",
            "peft",
            "--model",
            STORIES,
            "--out",
            _file(d / "blocker") + "/out",
        ],
        fault=no_work_allowed,
    ),
    Case(
        "export-out-wrong-suffix",
        "export",
        "--to axolotl --out x.json (a YAML config in a .json file)",
        "--to axolotl writes a .yaml or .yml file",
        lambda w, d: ["export", w.importance("ok"), "--to", "axolotl", "--model", STORIES, "--out", d / "x.json"],
        fault=no_work_allowed,
    ),
    Case(
        "export-out-other-suffix",
        "export",
        "--to peft --out x.yaml (another format's config suffix)",
        "--to peft writes a .json file",
        lambda w, d: ["export", w.importance("ok"), "--to", "peft", "--out", d / "x.yaml"],
    ),
    Case(
        "export-out-exists",
        "export",
        "--out names a config file that exists, with --model (refused before it loads); no --overwrite",
        "exists; --overwrite replaces it",
        lambda w, d: ["export", w.importance("ok"), "--to", "peft", "--model", STORIES, "--out", _file(d / "x.json")],
        fault=no_work_allowed,
    ),
    Case(
        "export-out-adapter-folder",
        "export",
        "--to peft --out a saved peft adapter's folder (adapter_model.safetensors), even with --overwrite",
        "holds trained adapter weights",
        lambda w, d: ["export", w.importance("ok"), "--to", "peft", "--out", _adapter_folder(d), "--overwrite"],
    ),
    Case(
        "export-dtype-without-model",
        "export",
        "--dtype without --model (export loads no model, so it would do nothing)",
        "--dtype applies to the model export loads: give --model too",
        lambda w, d: ["export", w.importance("ok"), "--to", "peft", "--dtype", "bfloat16"],
    ),
    Case(
        "report-out-is-a-folder",
        "report",
        "--out names an existing folder, not a file",
        "is a folder; give a file name",
        lambda w, d: ["report", w.importance("ok"), "--out", d],
    ),
    # ---- pruning (layerscope prune: src/layerscope/pruning/, docs/pruning.md)
    Case(
        "prune-every-block",
        "prune",
        "--remove 5 on a 5-block model (nothing would be left)",
        "at least one must stay",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "5", "--out", _out(d)],
    ),
    Case(
        "prune-ranking-other-model",
        "prune",
        "--importance computed on another model (weights fingerprint differs)",
        "weights fingerprint",
        lambda w, d: [
            "prune",
            *STORY,
            "--importance",
            w.importance("fp", _fingerprint),
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-ranking-not-aggregable",
        "prune",
        "a module ranking with a missing score: its block's mean is undefined",
        "cannot aggregate",
        lambda w, d: [
            "prune",
            *STORY,
            "--importance",
            w.importance("missing-score", _missing_score),
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-block-ranking-for-sublayers",
        "prune",
        "a block-level ranking asked to prune sub-layers (aggregation only goes coarser)",
        "cannot refine",
        lambda w, d: [
            "prune",
            *STORY,
            "--importance",
            w.importance("stories-blocks", _to_blocks),
            "--granularity",
            "sublayer",
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-out-exists",
        "prune",
        "--out names a folder that already exists (refused before the model is loaded)",
        "already exists",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--out", _empty_folder(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-out-under-a-file",
        "prune",
        "--out below a regular file (refused before the model is loaded, not when saving)",
        "not a directory",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--out", _file(d / "blocker") + "/out"],
        fault=no_work_allowed,
    ),
    Case(
        "prune-heal-data-garbage",
        "prune",
        "--heal names a file that is not SFT data (read before anything is pruned)",
        "--heal",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "last",
            "--remove",
            "1",
            "--heal",
            w.write("not-sft.json", "{ this is not JSON"),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-curve-k-max-every-block",
        "prune-curve",
        "--k-max 5 on a 5-block model (the last point would remove every block)",
        "at least one must stay",
        lambda w, d: ["prune-curve", *STORY, "--k-max", "5", "--out", _out(d)],
    ),
    Case(
        "prune-curve-second-task-typo",
        "prune-curve",
        "--task loss:demo --task no_such_task: the second task is misspelt (no curve of the first is written)",
        "unknown task 'no_such_task'",
        fault=no_work_allowed,
        build=lambda w, d: [
            "prune-curve",
            *STORY,
            "--task",
            "loss:demo",
            "--task",
            "no_such_task",
            "--k-max",
            "2",
            "--max-length",
            "64",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-curve-importance-same-label",
        "prune-curve",
        "two --importance paths whose run folders share a name (both curves would be labelled alike)",
        "would both be labelled",
        lambda w, d: [
            "prune-curve",
            *STORY,
            "--importance",
            w.importance("ok"),
            "--importance",
            w.importance("fp", _fingerprint),
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-importance-no-label",
        "prune-curve",
        "--importance =PATH: an empty LABEL (the curve needs a name)",
        "give PATH or LABEL=PATH",
        lambda w, d: ["prune-curve", *STORY, "--importance", "=" + w.importance("ok"), "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-importance-folder-named-as-an-order",
        "prune-curve",
        "--importance runs/ablation: a plain path whose folder's name is a curve the command draws itself",
        "its folder's name) is taken",
        lambda w, d: [
            "prune-curve",
            *STORY,
            "--importance",
            str(Path(w.write("ablation/importance.json", Path(w.importance("ok")).read_text())).parent),
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-ranking-other-model",
        "prune-curve",
        "--importance computed on another model (weights fingerprint differs)",
        "weights fingerprint",
        lambda w, d: [
            "prune-curve",
            *STORY,
            "--importance",
            "other=" + w.importance("fp", _fingerprint),
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-curve-label-a-file-name",
        "prune-curve",
        "--importance curves.json=R: a label that is the name of a file the task folder holds",
        "the label 'curves.json' is taken",
        lambda w, d: ["prune-curve", *STORY, "--importance", "curves.json=" + w.importance("ok"), "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-label-taken",
        "prune-curve",
        "--importance shapley-proximity=R: a label of a curve the command draws itself (it would be replaced)",
        "is taken",
        lambda w, d: [
            "prune-curve",
            *STORY,
            "--importance",
            "shapley-proximity=" + w.importance("fp", _fingerprint),
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-same-folder",
        "prune-curve",
        "two --task whose results would share an output folder",
        "share an output folder",
        lambda w, d: ["prune-curve", *STORY, "--task", "arc_easy", "--task", "arc_easy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-selection-items-negative",
        "prune-curve",
        "--selection-items -1",
        "--selection-items must be >= 0",
        lambda w, d: ["prune-curve", *STORY, "--selection-items", "-1", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-cache-negative",
        "prune-curve",
        "--cache-mb -1",
        "--cache-mb must be >= 0",
        lambda w, d: ["prune-curve", *STORY, "--cache-mb", "-1", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-selection-past-the-data",
        "prune-curve",
        "--selection-items past the end of the task (no items left after the --limit scored ones)",
        "none left after the first",
        lambda w, d: [
            "prune-curve",
            *STORY,
            "--task",
            "loss:demo",
            "--limit",
            "100000",
            "--selection-items",
            "4",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-method-ila",
        "prune",
        "--method ila (ILA trains adapters: it is a run of its own)",
        "trains adapters",
        lambda w, d: ["prune", *STORY, "--method", "ila", "--remove", "1", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-estimator-needs-budget",
        "prune",
        "--method shapley --estimator permutation (it needs a budget prune has no option for)",
        "invalid choice: 'permutation'",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "shapley",
            "--estimator",
            "permutation",
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-estimator-without-shapley",
        "prune",
        "--estimator exact with --method last (it would be ignored)",
        "--estimator applies to --method shapley, not --method last",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "last",
            "--estimator",
            "exact",
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-data-unused",
        "prune",
        "--data with --method last (only block-influence / angular read it)",
        "--data applies to --method block-influence / angular",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "last",
            "--data",
            w.sft_file(),
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-heal-options-without-heal",
        "prune",
        "--heal-method full --lr 1e-3 without --heal (nothing is trained: they would be ignored)",
        "--heal-method / --lr: healing options; give --heal",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "last",
            "--heal-method",
            "full",
            "--lr",
            "1e-3",
            "--remove",
            "1",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    # ---- demo settings
    Case(
        "demo-eps-zero",
        "demo",
        "--eps 0 (stage 1 could never become stable; refused before the model is loaded)",
        "--eps (eps) must be a positive number",
        lambda w, d: ["demo", "--model", STORIES, "--eps", "0", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    # ---- placement: --device / --dtype / --device-map / --max-memory (core/devices.py, docs/large-models.md)
    Case(
        "device-missing",
        "eval",
        "--device cuda:99: a GPU this machine does not have",
        "device 'cuda:99'",  # core.devices names the value neutrally: load_model(device=...) says the same
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--device", "cuda:99"],
    ),
    Case(
        "device-bogus",
        "eval",
        "--device gpu0 (not a torch device name)",
        "is not a device",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--device", "gpu0"],
    ),
    Case(
        "dtype-bogus",
        "eval",
        "--dtype half-ish",
        "unknown dtype",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--dtype", "half-ish"],
    ),
    Case(
        "device-map-bogus",
        "ablate",
        "--device-map everywhere (neither a strategy nor JSON)",
        "use auto, balanced",
        lambda w, d: [
            "ablate",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--device-map",
            "everywhere",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "device-map-bad-device",
        "ablate",
        "--device-map with a module sent to no device (gpu)",
        "is not a device",
        lambda w, d: [
            "ablate",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--device-map",
            '{"": "gpu"}',
            "--out",
            _out(d),
        ],
    ),
    Case(
        "max-memory-bogus",
        "similarity",
        "--max-memory 0=lots",
        "not a size",
        lambda w, d: ["similarity", *STORY, "--data", w.sft_file(), "--max-memory", "0=lots", "--out", _out(d)],
    ),
    Case(
        "max-memory-gpu-missing",
        "eval",
        "--max-memory naming GPU 99, which the machine lacks (no CUDA here; index 99 so it holds on GPU machines too)",
        "--max-memory names GPU 99, but this machine has",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--max-memory", "99=1GiB"],
    ),
    Case(
        "device-map-gpu-missing",
        "eval",
        "--device-map sending everything to GPU 99, which the machine lacks",
        "--device-map names GPU 99, but this machine has",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--device-map", '{"": 99}'],
    ),
    Case(
        "offload-folder-is-a-file",
        "eval",
        "--offload-folder naming an existing file",
        "a file is in the way, not a folder",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--device-map",
            '{"": "disk"}',
            "--offload-folder",
            _file(d / "afile"),
        ],
    ),
    Case(
        "device-and-device-map",
        "eval",
        "--device cpu with --device-map auto (two placements)",
        "give one",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--device", "cpu", "--device-map", "auto"],
    ),
    Case(
        "finetune-full-offloaded",
        "finetune",
        "--method full on a model the device map offloads to disk",
        "needs every weight in memory",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--method",
            "full",
            "--device-map",
            '{"": "disk"}',
            "--offload-folder",
            str(d / "offload"),
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    # 4-/8-bit loading (bitsandbytes)
    Case(
        "prune-load-in",
        "prune",
        "--load-in 8bit: a pruned copy is saved from plain weights",
        "load it without --load-in",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--load-in", "8bit", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "hellaswag-ending-empty-after-cleaning",
        "eval",
        "a HellaSwag ending that lm-eval's cleaning empties ('[step] '): it would be scored as a bare space",
        "ending 0 is empty after cleaning",
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file(
                "hs_step",
                [
                    {
                        "activity_label": "Roof",
                        "ctx_a": "A man is on a roof.",
                        "ctx_b": "he",
                        "endings": ["[step] ", "is ripping tiles off."],
                        "label": 1,
                    }
                ],
            ),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "mc-gold-letter-is-choice-text",
        "eval",
        'an MC gold "A" among choices ["B", "A"]: the text of choice 1, the letter of choice 0',
        'gold "A" is both the text of choice 1 and the letter A (choice 0)',
        lambda w, d: [
            "eval",
            *STORY,
            "--task",
            w.mc_file("letter_text", [{"query": "Q", "choices": ["B", "A"], "gold": "A"}]),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-heldout-is-data",
        "finetune",
        "--heldout names the --data file: the held-out loss would be measured on training data",
        "holds the same file as --data",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--heldout",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "sft-mc-with-rationale",
        "ila",
        "--data holds AQuA-style items (question, options, rationale): multiple choice, not reasoning records",
        "multiple-choice items",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.write(
                "aqua.jsonl",
                json.dumps({"question": "When?", "options": ["A)1h", "B)2h"], "rationale": "2h.", "correct": "B"}),
            ),
            "--out",
            _out(d),
            *ILA[:-1],
        ],
    ),
    Case(
        "task-mmlu-named-file-missing",
        "eval",
        "--task mmlu_mydata.jsonl: a missing file whose name starts like an MMLU subject's",
        "mmlu_mydata.jsonl: evaluation file not found",
        lambda w, d: ["eval", *STORY, "--task", "mmlu_mydata.jsonl"],
        fault=no_work_allowed,
    ),
    # ---- an empty value (an unset shell variable: --task "$TASK"): refused by name, in every command
    Case(
        "eval-task-empty",
        "eval",
        '--task "" (it used to evaluate all of arc_easy)',
        "argument --task: empty value",
        lambda w, d: ["eval", *STORY, "--task", ""],
        fault=no_work_allowed,
    ),
    Case(
        "eval-data-empty",
        "eval",
        '--data ""',
        "argument --data: empty value",
        lambda w, d: ["eval", *STORY, "--data", ""],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-task-empty",
        "ablate",
        '--task "" (it was read as the folder ".")',
        "argument --task: empty value",
        lambda w, d: ["ablate", *STORY, "--task", "", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-task-empty",
        "shapley",
        '--task ""',
        "argument --task: empty value",
        lambda w, d: ["shapley", *STORY, "--task", "", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-task-empty",
        "prune",
        '--task ""',
        "argument --task: empty value",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--task", "", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-task-empty",
        "prune-curve",
        '--task "" as the second of two tasks',
        "argument --task: empty value",
        lambda w, d: ["prune-curve", *STORY, "--task", w.mc_file("ok", MC_OK), "--task", "", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "similarity-data-empty",
        "similarity",
        '--data "" (it was refused only after the model loaded, naming "")',
        "argument --data: empty value",
        lambda w, d: ["similarity", *STORY, "--data", "", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ila-data-empty",
        "ila",
        '--data ""',
        "argument --data: empty value",
        lambda w, d: ["ila", *STORY, "--data", "", "--out", _out(d), *ILA[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-data-empty",
        "finetune",
        '--data ""',
        "argument --data: empty value",
        lambda w, d: ["finetune", *STORY, "--data", "", "--mode", "all", "--out", _out(d), *TRAIN[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-eval-tasks-empty-entry",
        "finetune",
        "--eval-tasks 'arc_easy,' (an empty entry, which used to be dropped without a word)",
        "argument --eval-tasks: an empty entry in 'arc_easy,'",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--eval-tasks",
            "arc_easy,",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    # ---- options that would have no effect where given
    Case(
        "plot-top-on-bar-chart",
        "plot",
        "--top 0.5 on a block-granularity result (a bar chart; --top marks modules on heatmaps)",
        "--top marks modules on a module heatmap",
        lambda w, d: ["plot", w.importance("blocks", _to_blocks), "--out", d / "out" / "bar.png", "--top", "0.5"],
    ),
    Case(
        "ila-budget-fraction-with-penalty",
        "ila",
        "--budget-fraction 0.5 with the default --sparsity penalty (it was recorded as if used)",
        "--budget-fraction applies to --sparsity budget, not penalty",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), "--budget-fraction", "0.5", *ILA[:-1]],
        fault=no_work_allowed,
    ),
    Case(
        "ila-lambda-with-budget",
        "ila",
        "--lambda 3 with --sparsity budget (the penalty weight; budget mode has no penalty)",
        "--lambda applies to --sparsity penalty, not budget",
        lambda w, d: [
            "ila",
            *STORY,
            "--data",
            w.sft_file(),
            "--out",
            _out(d),
            "--sparsity",
            "budget",
            "--lambda",
            "3",
            *ILA[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "eval-max-length-with-mc-task",
        "eval",
        "--max-length 8 with a multiple-choice task (it cuts SFT examples only)",
        "--max-length applies to SFT examples (--data, --task loss:<file>) only",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--max-length", "8"],
        fault=no_work_allowed,
    ),
    Case(
        "eval-no-append-eos-with-mc-task",
        "eval",
        "--no-append-eos with the default task, arc_easy (multiple choice)",
        "--no-append-eos applies to SFT examples",
        lambda w, d: ["eval", *STORY, "--no-append-eos"],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-max-length-with-mc-task",
        "ablate",
        "--max-length 8 with a multiple-choice task (it applies to loss:<file>)",
        "--max-length applies to SFT examples (--task loss:<file>) only",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("ok", MC_OK), "--max-length", "8", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-append-eos-with-mc-task",
        "shapley",
        "--append-eos with a multiple-choice task (it applies to loss:<file>)",
        "--append-eos applies to SFT examples (--task loss:<file>) only",
        lambda w, d: ["shapley", *STORY, "--task", w.mc_file("ok", MC_OK), "--append-eos", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-limit-without-task",
        "prune",
        "--limit 50 with --importance and no --task (nothing is scored: it would be ignored)",
        "--limit applies to the items of --task",
        lambda w, d: [
            "prune",
            *STORY,
            "--importance",
            w.importance("stories"),
            "--remove",
            "1",
            "--limit",
            "50",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "compare-out-file-name",
        "compare",
        "--out x.json: compare writes a folder of files, so a file name would become a folder",
        "compare writes a folder",
        lambda w, d: ["compare", w.importance("a"), w.importance("b"), "--out", d / "cmp.json"],
    ),
    Case(
        "prune-batch-size-without-task",
        "prune",
        "--batch-size 4 with --importance and no --task (nothing is scored: it would be ignored)",
        "--batch-size applies to the items of --task",
        lambda w, d: [
            "prune",
            *STORY,
            "--importance",
            w.importance("stories"),
            "--remove",
            "1",
            "--batch-size",
            "4",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-max-length-with-mc-task",
        "prune",
        "--max-length 64 with --method ablation on a multiple-choice task and no --heal (no text is cut)",
        "--max-length applies to --data, --task loss:<file> or --heal",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "ablation",
            "--task",
            w.mc_file("ok", MC_OK),
            "--remove",
            "1",
            "--max-length",
            "64",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-fields-without-task",
        "prune",
        "--fields with --method last and no --task (no task is scored: the mapping would be ignored)",
        "--fields applies to the items of --task",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--fields", "query=q", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "eval-fields-with-known-task",
        "eval",
        "--fields with --task arc_easy (a known task, read by its own field names)",
        "fields rename a custom file's fields; arc_easy is a known task",
        lambda w, d: ["eval", *STORY, "--task", "arc_easy", "--fields", "query=question", "--limit", "4"],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-fields-with-sft-task",
        "prune-curve",
        "--fields with --task loss:demo only (SFT data has no multiple-choice fields to rename)",
        "--fields names a multiple-choice file's fields; --task loss:demo is SFT data",
        lambda w, d: ["prune-curve", *STORY, "--task", "loss:demo", "--fields", "query=q", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    *[
        Case(
            f"finetune-{flag[2:]}-without-effect",
            "finetune",
            f"{flag} {value} {why}",
            f"{flag} has no effect here",
            lambda w, d, flag=flag, value=value, extra=extra: [
                "finetune",
                *STORY,
                "--data",
                w.sft_file(),
                "--mode",
                "all",
                "--out",
                _out(d),
                *TRAIN,
                flag,
                value,
                *extra,
            ],
            fault=no_work_allowed,
        )
        for flag, value, why, extra in (
            ("--checkpoint-every", "5", "without --save-checkpoints (no checkpoint is kept)", ()),
            ("--lisa-interval", "3", "without --lisa-layers (no LISA schedule)", ()),
            ("--heldout-fraction", "0.2", "beside --heldout (the file is the held-out set)", ("--heldout", "demo")),
            ("--eval-limit", "5", "without --eval-tasks (nothing is evaluated by task)", ()),
        )
    ],
    Case(
        "ila-unknown-data-format",
        "ila",
        "--format bogus (checked as it is parsed, before the model loads)",
        "unknown data format 'bogus'; use auto or one of alpaca",
        lambda w, d: ["ila", *STORY, "--data", w.sft_file(), "--out", _out(d), *ILA, "--format", "bogus"],
        fault=no_work_allowed,
    ),
    Case(
        "eval-known-task-with-a-split",
        "eval",
        "--task arc_easy:validation (the hub's split syntax; only mmlu:SUBJECT picks a part of a task)",
        "arc_easy:validation: a known task takes no :SPLIT",
        lambda w, d: ["eval", *STORY, "--task", "arc_easy:validation"],
        fault=no_work_allowed,
    ),
    Case(
        "eval-fields-with-an-mmlu-csv",
        "eval",
        "--fields with an MMLU CSV (read by its columns: the mapping would be ignored)",
        "is an MMLU CSV (question, four choices, answer letter), read by their columns",
        lambda w, d: ["eval", *STORY, "--task", w.write("quiz_test.csv", "Q?,1,2,3,4,B\n"), "--fields", "query=q"],
        fault=no_work_allowed,
    ),
    Case(
        "eval-fields-with-a-loss-task",
        "eval",
        "--fields with --task loss:FILE (SFT data has no fields to rename)",
        "--task loss: evaluates loss on SFT data; --fields applies to a multiple-choice --task only",
        lambda w, d: ["eval", *STORY, "--task", f"loss:{w.sft_file()}", "--fields", "query=q"],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-heldout-all-training-examples",
        "finetune",
        "--heldout holds the --data records in another order: every held-out example is a training example",
        "all 8 of its examples are also training examples",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--heldout",
            w.write("sft_reversed.json", json.dumps(json.loads(Path(w.sft_file()).read_text())[::-1])),
            "--mode",
            "all",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
    ),
    Case(
        "similarity-mc-file-with-a-bad-item",
        "similarity",
        "--data a multiple-choice file whose second item's gold is out of range",
        "line 2: gold 7 out of range for 2 choices",
        lambda w, d: ["similarity", *STORY, "--data", w.mc_file("gold_oor", MC_GOLD_OUT_OF_RANGE), "--out", _out(d)],
    ),
    Case(
        "finetune-full-in-bfloat16",
        "finetune",
        "--method full --dtype bfloat16: AdamW updates bfloat16 weights with no float32 copy (most updates round away)",
        "with no float32 copy",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--method",
            "full",
            "--dtype",
            "bfloat16",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-full-load-in",
        "finetune",
        "--method full --load-in 8bit: quantised integer weights cannot be trained",
        "quantised weights cannot be trained",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--method",
            "full",
            "--load-in",
            "8bit",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "unknown-task-close-match",
        "eval",
        "--task arc_esay: a misspelt known task (the close name suggested)",
        "unknown task 'arc_esay' (did you mean arc_easy?)",
        lambda w, d: ["eval", *STORY, "--task", "arc_esay"],
        fault=no_work_allowed,
    ),
    Case(
        "fraction-as-percentage",
        "finetune",
        "--fraction 30 (a percentage where a fraction is asked for)",
        "--fraction 30 must be in (0, 1]; did you mean 0.3?",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--importance",
            w.importance("stories"),
            "--fraction",
            "30",
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-fraction-as-percentage",
        "prune",
        "--fraction 30 (a percentage; prune's fraction is in (0, 1))",
        "--fraction 30 must be in (0, 1); did you mean 0.3?",
        lambda w, d: ["prune", *STORY, "--method", "last", "--fraction", "30", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "mc-wrong-fields-mapping",
        "ablate",
        "MC JSONL with question/options/answer: the --fields mapping that reads it is named",
        "pass --fields query=question,choices=options,gold=answer",
        lambda w, d: ["ablate", *STORY, "--task", w.mc_file("wrong_fields", MC_WRONG_FIELDS), "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "similarity-mc-wrong-fields",
        "similarity",
        "--data MC JSONL with question/options/answer (similarity has no --fields: the renames are named)",
        "rename its fields (question to query, options to choices, answer to gold)",
        lambda w, d: ["similarity", *STORY, "--data", w.mc_file("wrong_fields", MC_WRONG_FIELDS), "--out", _out(d)],
    ),
    Case(
        "similarity-given-task",
        "similarity",
        "--task arc_easy to similarity, which takes its data (task names too) as --data",
        "similarity takes its data as --data (e.g. --data arc_easy)",
        lambda w, d: ["similarity", *STORY, "--task", "arc_easy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-given-data",
        "ablate",
        "--data FILE to ablate, which scores a task (an SFT file's loss as --task loss:FILE)",
        "ablate scores a task: --task NAME, or --task loss:",
        lambda w, d: ["ablate", *STORY, "--data", w.sft_file(), "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-given-task",
        "finetune",
        "--task arc_easy to finetune, which trains on SFT data (--data, required)",
        "finetune takes its data as --data FILE (SFT data), not a task (finetune has no --task)",
        lambda w, d: [
            "finetune",
            *STORY,
            "--task",
            "arc_easy",
            "--importance",
            w.importance("stories"),
            "--out",
            _out(d),
            *TRAIN[:-1],
        ],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-budget-below-one-pair",
        "shapley",
        "--estimator permutation --budget 5 over 5 block players (one antithetic pair takes up to 10 evaluations)",
        "too small for one antithetic pair",
        lambda w, d: [
            "shapley",
            *STORY,
            "--task",
            w.mc_file("ok", MC_OK),
            "--granularity",
            "block",
            "--estimator",
            "permutation",
            "--budget",
            "5",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "prune-curve-orders-unknown",
        "prune-curve",
        "--orders names an order prune-curve does not compute (first is not one)",
        "unknown order 'first'",
        lambda w, d: ["prune-curve", *STORY, "--orders", "ablation,first", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-orders-empty",
        "prune-curve",
        "--orders none without --importance: no curve to draw",
        "no curve to draw",
        lambda w, d: ["prune-curve", *STORY, "--orders", "none", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-orders-greedy-switched-off",
        "prune-curve",
        "--orders greedy with --no-greedy: the order is named and switched off",
        "which --no-greedy switches off",
        lambda w, d: ["prune-curve", *STORY, "--orders", "greedy", "--no-greedy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-eval-tasks-loss",
        "finetune",
        "--eval-tasks loss:FILE (finetune evaluates multiple-choice tasks; the held-out loss is its own report)",
        "takes multiple-choice tasks; the held-out loss is reported already",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            "demo",
            "--mode",
            "all",
            "--eval-tasks",
            f"loss:{w.sft_file()}",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "fields-key-twice",
        "eval",
        "--fields mapping one key twice (query=question,query=options: the last would win unsaid)",
        "--fields maps query twice (to question and to options): give each key once",
        lambda w, d: ["eval", *STORY, "--task", w.mc_file("ok", MC_OK), "--fields", "query=question,query=options"],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-subject-with-loss-task",
        "ablate",
        "--subject anatomy with --task loss:demo (SFT data has no MMLU subjects to pick)",
        "--task loss: evaluates loss on SFT data; --subject applies to a multiple-choice --task only",
        lambda w, d: ["ablate", *STORY, "--task", "loss:demo", "--subject", "anatomy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "shapley-subject-not-mmlu",
        "shapley",
        "--subject anatomy with --task arc_easy (a task that is not MMLU)",
        "--subject only applies to MMLU",
        lambda w, d: ["shapley", *STORY, "--task", "arc_easy", "--subject", "anatomy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-subject-without-task",
        "prune",
        "--subject with --method last and no --task (no task is scored: it would pick nothing)",
        "--subject applies to the items of --task; --method last without --task scores none",
        lambda w, d: ["prune", *STORY, "--method", "last", "--remove", "1", "--subject", "anatomy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-subject-default-task",
        "prune-curve",
        "--subject without --task (prune-curve scores arc_easy by default, not MMLU)",
        "--subject picks MMLU subjects; prune-curve scores arc_easy by default",
        lambda w, d: ["prune-curve", *STORY, "--subject", "anatomy", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-no-append-eos-mc-task",
        "prune",
        "--no-append-eos with a multiple-choice --task and no SFT data (it would end no text)",
        "--no-append-eos applies to SFT data",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "last",
            "--remove",
            "1",
            "--task",
            "arc_easy",
            "--no-append-eos",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "prune-curve-no-append-eos-mc-task",
        "prune-curve",
        "--no-append-eos with the default multiple-choice task and no similarity order on SFT data",
        "--no-append-eos applies to SFT data",
        lambda w, d: ["prune-curve", *STORY, "--no-append-eos", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "similarity-format-with-text",
        "similarity",
        "--format text with --data text:FILE (plain text has no records to read in a format)",
        "--format text applies to SFT data",
        lambda w, d: [
            "similarity",
            *STORY,
            "--data",
            "text:" + w.write("book.txt", "once upon a time " * 50),
            "--format",
            "text",
            "--out",
            _out(d),
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-unknown-data-format",
        "finetune",
        "--format bogus (checked as it is parsed, before the model loads)",
        "unknown data format 'bogus'; use auto or one of alpaca",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--out",
            _out(d),
            "--format",
            "bogus",
        ],
        fault=no_work_allowed,
    ),
    Case(
        "subject-replaces-the-task-subject",
        "eval",
        "--task mmlu_anatomy with --subject virology (the task names its subject; one would replace the other)",
        "--task mmlu_anatomy names its subject; --subject virology would replace it: give one",
        lambda w, d: ["eval", *STORY, "--task", "mmlu_anatomy", "--subject", "virology"],
        fault=no_work_allowed,
    ),
    Case(
        "ablate-fields-default-task",
        "ablate",
        "--fields without --task (ablate scores arc_easy by default, a known task read by its own names)",
        "ablate scores arc_easy by default (a known task)",
        lambda w, d: ["ablate", *STORY, "--fields", "query=q", "--out", _out(d)],
        fault=no_work_allowed,
    ),
    Case(
        "prune-no-append-eos-data-read-as-task",
        "prune",
        "--no-append-eos with block-influence on an MC file as --data (read as a task's contexts, not SFT records)",
        "is read as a task's contexts: drop it",
        lambda w, d: [
            "prune",
            *STORY,
            "--method",
            "block-influence",
            "--data",
            w.mc_file("mc.jsonl", [{"query": "Q?", "choices": ["a", "b"], "gold": 0}] * 4),
            "--remove",
            "1",
            "--no-append-eos",
            "--out",
            _out(d),
        ],
    ),
    Case(
        "plot-out-folder-is-a-file",
        "plot",
        "--out without a suffix (a folder for the figures) names an existing file",
        "a file is in the way, not a directory",
        lambda w, d: ["plot", w.importance("stories"), "--out", _file(d / "figures")],
    ),
    Case(
        "finetune-lora-option-with-full",
        "finetune",
        "--lora-r 4 with --method full, which trains no adapter (was recorded in report.json as if used)",
        "--lora-r has no effect with --method full",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--method",
            "full",
            "--lora-r",
            "4",
            "--out",
            _out(d),
            *TRAIN,
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-selection-seed-without-a-draw",
        "finetune",
        "--selection-seed 7 with --mode all, which draws nothing at random",
        "--selection-seed has no effect with --mode all",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--selection-seed",
            "7",
            "--out",
            _out(d),
            *TRAIN,
        ],
        fault=no_work_allowed,
    ),
    Case(
        "finetune-lisa-layers-every-block",
        "finetune",
        "--lisa-layers 5 where the selection's modules lie in 5 blocks (every block would train at every step)",
        "the selected modules lie in 5 block(s)",
        lambda w, d: [
            "finetune",
            *STORY,
            "--data",
            w.sft_file(),
            "--mode",
            "all",
            "--lisa-layers",
            "5",
            "--out",
            _out(d),
            *TRAIN,
        ],
    ),
    Case(
        "export-seed-without-a-draw",
        "export",
        "--seed 4 with --mode top (the default), which draws nothing at random",
        "--seed has no effect with --mode top",
        lambda w, d: ["export", w.importance("ok"), "--to", "peft", "--seed", "4"],
        fault=no_work_allowed,
    ),
    Case(
        "export-lora-option-with-full",
        "export",
        "--lora-dropout 0.3 with --method full (an axolotl config that trains no adapter)",
        "--lora-dropout has no effect with --method full",
        lambda w, d: ["export", w.importance("ok"), "--to", "axolotl", "--method", "full", "--lora-dropout", "0.3"],
        fault=no_work_allowed,
    ),
]


def _gzip_cut() -> bytes:
    """The first 30 bytes of a gzipped JSON Lines file: a valid header, a stream that stops."""
    import gzip

    return gzip.compress(b'{"instruction": "Say hi.", "output": "Hi."}\n' * 50)[:30]


def _empty_folder(d: Path) -> Path:
    (d / "tasks").mkdir()
    return d / "tasks"


def _missing_score(d: dict) -> None:
    """One module of the ranking has no score (null in the JSON)."""
    d["scores"][0] = None


def _to_blocks(d: dict) -> None:
    """The ranking aggregated to blocks (a block-level result of the same model)."""
    from layerscope.core.importance import LayerImportance
    from layerscope.core.levels import to_level

    blocks = to_level(LayerImportance.from_dict(d), "block").to_dict()
    d.clear()
    d.update(blocks)


def _no_results(w: Workspace) -> str:
    """A run folder holding a subfolder and a file, but no importance.json anywhere."""
    w.write("no-results/adapter/adapter_config.json", "{}")
    return str(Path(w.write("no-results/notes.txt", "not a result\n")).parent)


# ----------------------------------------------------------------------------- running a case


@dataclass
class Outcome:
    exit_code: int  # 1 when an exception escaped main() (what `python -m` would exit with)
    stdout: str
    stderr: str
    crash: str | None = None  # "<type>: <message>" of an exception that escaped main()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def stdout_line(self, fragment: str) -> str:
        """The first output line holding ``fragment`` (else the first line), spaces collapsed."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        line = next((x for x in lines if fragment.lower() in x.lower()), lines[0] if lines else "")
        return " ".join(line.split())

    def message(self, fragment: str = "") -> str:
        """What the user reads, on one line: the error line, a crash, or the output line that shows it worked."""
        if self.crash:
            return f"(traceback) {self.crash}"
        if self.exit_code == 0:
            return f"(works) {self.stdout_line(fragment)}"
        lines = self.error_lines
        if not lines:
            return "(nothing on stderr)"
        errors = [line for line in lines if ": error: " in line] or lines[-1:]
        others = len(lines) - 1
        return errors[0] + (f" (below {others} more lines on stderr)" if others else "")


def run_case(case: Case, ws: Workspace) -> tuple[Outcome, Path]:
    """Build the case's inputs, run the CLI in-process with stdout / stderr captured."""
    from layerscope.cli.app import main

    folder = ws.case_dir(case.id)
    argv = [str(a) for a in case.build(ws, folder)]
    out, err = io.StringIO(), io.StringIO()
    crash, code = None, 0
    fault = case.fault() if case.fault else contextlib.nullcontext()
    width = mock.patch.dict(os.environ, {"COLUMNS": "100"})  # argparse wraps its usage to the terminal
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), width, fault, _shown_on(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # a bug: the CLI would print a traceback
            crash = f"{type(e).__name__}: {_first_line(str(e))}"
            err.write(traceback.format_exc())
            code = 1
    return Outcome(int(code or 0), out.getvalue(), err.getvalue(), crash), folder


@contextlib.contextmanager
def _shown_on(err: io.StringIO) -> Iterator[None]:
    """What a user's terminal would also show on stderr, written to ``err``: library log records
    (accelerate, transformers: under pytest they go to its log capture instead) and warnings, filtered
    as a plain ``python`` run filters them (deprecations hidden), one line each."""
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # transformers does not propagate
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            yield
        for w in caught:
            err.write(f"{w.category.__name__}: {_first_line(str(w.message))}\n")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def leftover_results(folder: Path) -> list[str]:
    """Complete-looking results (or temp files) a refused run left under its case folder."""
    found: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if any(f in p.parents for f in found):
            continue  # inside a folder already reported (adapter/)
        if p.is_file() and p.read_bytes() == BLOCKER_TEXT.encode():
            continue  # a file the case itself put in the way
        if p.name in RESULT_NAMES or p.suffix in (".png", ".tmp") or p.name.startswith("."):
            found.append(p)
    return [str(p.relative_to(folder)) for p in found]


def normalise(text: str, ws: Workspace) -> str:
    """Replace the scratch folder and the shared model path so messages are stable across runs."""
    text = text.replace(str(ws.root.resolve()), "<tmp>").replace(str(ws.root), "<tmp>")
    text = text.replace(str(STORIES), "<stories260K>")
    text = re.sub(r"\b[0-9a-f]{16}\b", "<fingerprint>", text)
    return text


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# ----------------------------------------------------------------------------- the document


@dataclass
class Captured:
    """What one case did when the generator ran it."""

    message: str  # normalised, one line
    exit_code: int
    left_behind: list[str]  # results the refused run left in its folder


def known_defects() -> list[str]:
    """Distinct known-defect texts, numbered in order of first use (the page's footnotes)."""
    notes: list[str] = []
    for c in CASES:
        for note in (c.xfail, c.leaves):
            if note and note not in notes:
                notes.append(note)
    return notes


def doc_rows(captured: dict[str, Captured]) -> list[str]:
    """Markdown table rows, one per case, in table order."""
    notes = known_defects()
    rows = ["| case | command | what is wrong | what layerscope says | exit code |", "|---|---|---|---|---|"]
    for c in CASES:
        got = captured[c.id]
        message = got.message
        if got.left_behind:
            message += f"; leaves {', '.join(got.left_behind)}"
        refs = sorted(notes.index(n) + 1 for n in (c.xfail, c.leaves) if n)
        if refs:
            message += f" (known defect {', '.join(map(str, refs))})"
        rows.append(f"| `{c.id}` | {c.command} | {_cell(c.problem)} | {_cell(message)} | {got.exit_code} |")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_doc(captured: dict[str, Captured]) -> str:
    head = f"""# Reliability: what layerscope does with bad input

Generated by `{GENERATOR}` from the case table in `tests/bad_inputs.py`; do not edit by hand.
`tests/test_bad_input_matrix.py` runs the same cases and checks, for each, the exit code, that stderr
holds one line naming the problem, and that the output folder holds no complete-looking result (no
importance.json, report.json, adapter/, figure or temp file); it also fails when this page is out of date
with the table. Each case ran in-process on stories260K or a tiny model built from a config; scratch paths
read `<tmp>`, the shared tiny model `<stories260K>`, weight fingerprints `<fingerprint>`.

Exit code 2: a problem with what was passed, one line on stderr. 0: the input works. 1: a crash (a
traceback). Rows marked "known defect" are expected failures (strict xfail) in the test; the notes below
the table say what has to change.

"""
    notes = known_defects()
    foot = ["", "Known defects:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)] if notes else []
    return head + "\n".join(doc_rows(captured) + foot) + "\n"


def parse_doc(text: str) -> list[dict[str, str]]:
    """The table rows of a generated page as dicts (case id, command, problem, message, exit code)."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*) \| (-?\d+) \|$", line)
        if m:
            rows.append(
                {"id": m[1], "command": m[2], "problem": m[3].replace("\\|", "|"), "message": m[4], "exit_code": m[5]}
            )
    return rows
