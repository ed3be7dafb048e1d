import json
import re
from unittest import mock

import pytest
import torch
from tiny_models import TinyTokenizer, random_sft, tiny_model

from layerscope.core.data import collate
from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.methods.ila import ILAConfig, run_ila
from layerscope.training import (
    FinetuneConfig,
    count_params,
    finetune,
    freeze_except,
    probe_grad_flow,
    time_forward_backward,
    time_optimizer_step,
)
from layerscope.training.lora import inject_lora, lora_adapted_paths
from layerscope.training.selection import Selection, select_modules

TRAIN, HELD = random_sft(12, 0), random_sft(4, 1)


def setup(selection_blocks=None, mode="top", fraction=0.25, granularity="module"):
    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    players = lm.players(granularity)
    imp = LayerImportance(
        method="t",
        granularity=granularity,
        players=players,
        scores=list(range(len(players))),
        model=model_info(model, lm, "tiny"),
    )
    return model, lm, select_modules(lm, imp, mode, fraction)


def batch():
    return collate(TRAIN.examples[:4], 0)


def test_lora_targets_exactly_the_selection_and_only_they_get_grads():
    model, lm, sel = setup(mode="freeze-bottom", fraction=0.25)  # 21 of 28 modules, blocks 1..3
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = inject_lora(model, lm, sel.modules, task_type="CAUSAL_LM")
    paths = {m.name: m.path for m in lm.linears}
    assert set(lora_adapted_paths(peft_model)) == {paths[m] for m in sel.modules}
    peft_model.train()
    peft_model(**batch()).loss.backward()
    base = peft_model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None
            if "lora_B" in name:  # B starts at zero, so A's grad is zero on step one; B's is not
                assert p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_full_only_selected_weights_train_and_frozen_ones_stay_bit_identical(tmp_path):
    model, lm, sel = setup(mode="top", fraction=0.25)  # block 3 only (7 modules)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = FinetuneConfig(method="full", max_steps=3, batch_size=4, lr=1e-2, eval_before=False, out_dir=str(tmp_path))
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    sel_paths = {m.path for m in lm.linears if m.name in set(sel.modules)}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {f"{p}.weight" for p in sel_paths}
    assert rep.trainable_params == sum(model.get_submodule(p).weight.numel() for p in sel_paths)
    assert rep.trainable_modules == 7 and rep.steps == 3
    # raw tensors, not a peft adapter: they go to trained/, and adapter/ is not written
    assert not (tmp_path / "adapter").exists() and rep.paths["trained"] == str(tmp_path / "trained")
    saved = json.loads((tmp_path / "trained" / "trained_modules.json").read_text())
    assert saved["modules"] == sel.modules and len(saved["parameters"]) == 7
    assert "load_trained" in saved["load"]


def test_a_finished_full_fine_tuning_gives_back_the_requires_grad_flags_and_keeps_the_weights():
    """Only the flags of a failed run were put back: after a finished one every weight but the selection's
    stayed frozen, for whatever ran next (another run, a gradient-based ranking)."""
    model, _, sel = setup(mode="top", fraction=0.25)
    model.model.embed_tokens.weight.requires_grad_(False)  # the caller's own freezing is theirs: kept
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config("full", save_adapter=False))
    assert rep.trained_model is model and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())  # trained, not undone


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_report_names_the_model_as_every_method_does(method):
    """Without model_name the report recorded None, where the other methods record the loaded name."""
    model, lm, sel = setup(mode="top", fraction=0.25)
    model.config.name_or_path = "org/tiny-llama"  # as from_pretrained sets it
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config(method, save_adapter=False))
    assert rep.model["name"] == model_info(model, lm)["name"] == "org/tiny-llama"
    named = quick_config(method, save_adapter=False, model_name="mine")
    assert finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, named).model["name"] == "mine"
    with pytest.raises(ConfigError, match="model_name must be a name"):  # before any training
        finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, quick_config(method, model_name=3))


def test_full_fine_tuning_weights_load_back_into_a_fresh_base_model(tmp_path):
    """``saving.load_trained`` puts trained/ into a fresh copy of the base model (and reads the
    adapter/ folder runs from before that name wrote); a LoRA adapter folder is refused in one line."""
    import shutil

    from layerscope.training.saving import how_to_load, load_trained

    model, lm, sel = setup(mode="top", fraction=0.25)
    cfg = FinetuneConfig(method="full", max_steps=2, batch_size=4, lr=1e-2, eval_before=False, out_dir=str(tmp_path))
    finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh = tiny_model("llama", n_layers=4)
    assert not all(torch.equal(p, trained[n]) for n, p in fresh.named_parameters())
    assert load_trained(fresh, tmp_path / "trained") is fresh
    assert all(torch.equal(p.detach(), trained[n]) for n, p in fresh.named_parameters())
    old = tmp_path / "old_run" / "adapter"  # the folder name full fine-tuning used to write
    shutil.copytree(tmp_path / "trained", old)
    again = load_trained(tiny_model("llama", n_layers=4), old)
    assert all(torch.equal(p.detach(), trained[n]) for n, p in again.named_parameters())
    line = how_to_load(tmp_path / "trained", "full")
    assert "not an adapter" in line and "load_trained" in line and "\n" not in line
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="a peft adapter: load it with PeftModel.from_pretrained"):
        load_trained(fresh, tmp_path / "lora")


def test_progress_bar_is_labelled_shows_the_loss_and_prints_no_log_dicts(tmp_path, capsys):
    """transformers' ProgressCallback printed every log dict (``{'loss': ...}``, ``{'train_runtime': ...}``)
    to stdout; the package's bar goes to stderr, labelled, with the loss in its postfix."""
    model, lm, sel = setup(mode="top", fraction=0.25)
    cfg = FinetuneConfig(max_steps=3, batch_size=4, lr=1e-2, eval_before=False, progress=True, logging_steps=1)
    finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    captured = capsys.readouterr()
    assert "{" not in captured.out and "train_runtime" not in captured.out + captured.err, captured.out
    assert "fine-tuning:" in captured.err and "3/3" in captured.err and "loss=" in captured.err
    assert "{'loss'" not in captured.err
    cfg = FinetuneConfig(max_steps=2, batch_size=4, eval_before=False, progress=False, logging_steps=1)
    finetune(tiny_model("llama", n_layers=4), TinyTokenizer(), TRAIN, HELD, sel, cfg)
    captured = capsys.readouterr()
    assert captured.out == "" and "fine-tuning" not in captured.err  # --no-progress: no bar, still no dicts


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_run_report_adapter_and_frozen_base(tmp_path):
    model, lm, sel = setup(mode="top", fraction=0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = FinetuneConfig(method="lora", max_steps=3, batch_size=4, lr=1e-2, out_dir=str(tmp_path), logging_steps=1)
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    base = rep.trained_model.get_base_model()
    for n, p in base.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), before[n.replace(".base_layer", "")]), n
    d = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "time_per_step_s",
        "tokens_per_s",
        "peak_memory_bytes",
        "trainable_params",
        "heldout_loss",
        "heldout_loss_before",
        "grad_flow",
        "selection",
    ):
        assert d[key] is not None, key
    assert d["tokens_per_s"] > 0 and d["peak_memory_bytes"] > 0 and len(d["train_loss"]) == 3
    assert d["heldout_loss"] != d["heldout_loss_before"]
    assert d["grad_flow"]["untrained_modules"] == []  # every selected module trained
    # the saved adapter reloads onto a fresh copy of the base model and adapts the same modules
    from peft import PeftModel

    fresh = tiny_model("llama", n_layers=4)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    assert set(lora_adapted_paths(reloaded)) == set(lora_adapted_paths(rep.trained_model))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


class _SignActivation(torch.nn.Module):
    """A gate activation with no gradient, as a sparse-attention indexer's top-k pick has none."""

    def forward(self, x):
        return torch.sign(x)


def test_a_selection_from_a_ranking_of_other_weights_is_refused_before_training():
    """select_modules checks the ranking's weights only when given a fingerprint; finetune checks the
    selection it is handed, as the CLI does (ignore_fingerprint: the same model in another dtype)."""
    _, _, sel = setup(mode="top", fraction=0.3)
    other = tiny_model("llama", n_layers=4)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # the same architecture, other weights
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    cfg = FinetuneConfig(max_steps=1, batch_size=4, eval_before=False, progress=False)
    with pytest.raises(ConfigError, match=r"the selection comes from a ranking of model 'tiny' .*ignore_fingerprint"):
        finetune(other, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())  # untouched
    rep = finetune(other, TinyTokenizer(), TRAIN, HELD, sel, cfg, ignore_fingerprint=True)
    assert rep.steps == 1


def test_a_selected_module_no_gradient_reaches_is_named(tmp_path):
    model, lm, sel = setup(mode="top", fraction=0.25)  # block 3's seven modules
    model.model.layers[3].mlp.act_fn = _SignActivation()  # gate_proj's output feeds only a step function
    cfg = FinetuneConfig(method="lora", max_steps=2, batch_size=4, lr=1e-2, eval_before=False, save_adapter=False)
    with pytest.warns(UserWarning, match=r"1 of 7 selected modules did not train .*: layers\.3\.mlp\.gate_proj$"):
        rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    assert rep.grad_flow["untrained_modules"] == ["layers.3.mlp.gate_proj"]


def test_a_model_that_trains_only_on_one_sequence_length_is_refused_in_one_line():
    """Reformer's axial position embeddings raise, in training mode, on any batch not exactly
    prod(axial_pos_shape) tokens long; ILA and fine-tuning refuse it before touching the model."""
    from transformers import ReformerConfig, ReformerModelWithLMHead

    config = ReformerConfig(
        is_decoder=True, vocab_size=64, hidden_size=16, num_attention_heads=2, attention_head_size=8,
        attn_layers=["local", "lsh"], axial_pos_shape=[4, 4], axial_pos_embds_dim=[8, 8], feed_forward_size=32,
        max_position_embeddings=16, pad_token_id=0,
    )  # fmt: skip
    model = ReformerModelWithLMHead(config).eval()
    lm = build_layer_map(model)
    sel = select_modules(lm, None, "all")
    refusal = r"^reformer: its axial position embeddings train only on sequences of exactly 16 tokens \(axial_pos"
    cfg = FinetuneConfig(method="lora", max_steps=1, batch_size=2, eval_before=False, save_adapter=False)
    with pytest.raises(ModelError, match=refusal):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)
    with pytest.raises(ModelError, match=refusal):
        run_ila(model, TinyTokenizer(), TRAIN, ILAConfig(max_steps=1, gate_steps=1, progress=False))
    assert not any(p.requires_grad is False for p in model.parameters()) and not model.training


def test_backward_stops_at_lowest_trainable_block():
    model, lm, sel = setup(mode="top", fraction=0.5, granularity="block")  # blocks 2, 3
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = inject_lora(model, lm, sel.modules, task_type="CAUSAL_LM")
    flow = probe_grad_flow(peft_model, lm, batch())
    assert flow["lowest_trainable_block"] == 2 and flow["truncated"]
    assert flow["input_requires_grad"] == [False, False, False, True]
    assert flow["blocks_in_backward"] == 2

    # hook the hidden state entering block 0 directly: no graph below the trainable blocks
    seen = {}

    def hook(module, args, kwargs):
        seen["rg"] = (args[0] if args else kwargs["hidden_states"]).requires_grad

    block0 = peft_model.get_base_model().get_submodule(lm.block_path(0))
    h = block0.register_forward_pre_hook(hook, with_kwargs=True)
    peft_model.train()
    out = peft_model(**batch())
    h.remove()
    assert seen["rg"] is False and out.loss.requires_grad

    # forcing input grads (what enable_input_require_grads does) puts every block on the graph
    peft_model.get_base_model().enable_input_require_grads()
    forced = probe_grad_flow(peft_model, lm, batch())
    assert forced["input_requires_grad"] == [True] * 4 and not forced["truncated"]


def test_time_optimizer_step_times_adamw_and_leaves_the_model_as_it_was():
    model, lm, sel = setup(mode="top", fraction=0.5, granularity="block")
    freeze_except(model, lm, sel.modules)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dt = time_optimizer_step(model, repeats=2)
    assert dt > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        time_optimizer_step(model)


def test_full_freeze_truncates_and_lower_selection_reaches_further():
    model, lm, _ = setup()
    names = [m.name for m in lm.linears if m.block == 1]
    freeze_except(model, lm, names)
    flow = probe_grad_flow(model, lm, batch())
    assert flow["input_requires_grad"] == [False, False, True, True] and flow["truncated"]
    assert count_params(model)[0] == sum(model.get_submodule(m.path).weight.numel() for m in lm.linears if m.block == 1)
    t = time_forward_backward(model, batch(), repeats=1)
    assert t > 0


def test_same_seed_same_result_and_lisa_schedule():
    def run(**kw):
        model, lm, sel = setup(mode="all")
        cfg = FinetuneConfig(method="lora", max_steps=4, batch_size=4, lr=5e-3, eval_before=False, **kw)
        return finetune(model, TinyTokenizer(), TRAIN, HELD, sel, cfg)

    a, b = run(seed=3), run(seed=3)
    assert a.heldout_loss == b.heldout_loss
    lisa = run(seed=3, lisa_layers=1, lisa_interval=2)
    assert [step for step, _ in lisa.lisa_history] == [0, 2]
    assert all(len(active) == 1 for _, active in lisa.lisa_history)
    # only the LoRA weights of blocks LISA activated moved away from zero-initialised B
    active = {b for _, bl in lisa.lisa_history for b in bl}
    base = lisa.trained_model.get_base_model()
    for n, p in base.named_parameters():
        if "lora_B" in n:
            block = int(n.split(".layers.")[1].split(".")[0])
            assert (p.abs().sum() > 0) == (block in active), n


def test_bad_config_fails_clearly():
    from layerscope.core.errors import ConfigError

    model, lm, sel = setup()
    with pytest.raises(ConfigError, match="method"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, FinetuneConfig(method="qlora"))
    with pytest.raises(ConfigError, match="max-steps"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, FinetuneConfig(max_steps=0))


def model_state(model) -> dict:
    """What a failed run must give back: parameter names and flags, train/eval mode, no peft."""
    return {
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "peft": hasattr(model, "peft_config"),
        "checkpointing": model.is_activation_checkpointing,
    }


def quick_config(method: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(method=method, max_steps=1, batch_size=4, lr=1e-2, eval_before=False, **kw)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_selection_naming_a_missing_module_fails_before_the_model_is_touched(method, tmp_path):
    model, _, _ = setup()  # 4 blocks: no layers.9
    before = model_state(model)
    bad = Selection(["layers.9.mlp.up_proj"], "top", 0.3, "module", ["layers.9.mlp.up_proj"], 28, 28)
    cfg = quick_config(method, out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="modules the model does not have .*layers.9.mlp.up_proj"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, bad, cfg)
    assert model_state(model) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_that_fails_midway_gives_the_model_back_and_a_retry_works(method, monkeypatch):
    from layerscope.training import finetuning

    model, _, sel = setup(mode="top", fraction=0.25)
    model.model.embed_tokens.weight.requires_grad_(False)  # flags of the user's own are put back as they were
    before = model_state(model)
    real_train = finetuning._train

    def train_then_fail(*args, **kwargs):
        real_train(*args, **kwargs)
        raise RuntimeError("killed midway")

    monkeypatch.setattr(finetuning, "_train", train_then_fail)
    with pytest.raises(RuntimeError, match="killed midway"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config(method, save_adapter=False))
    assert model_state(model) == before
    assert not any("lora_" in n for n, _ in model.named_parameters())
    monkeypatch.undo()
    # full fine-tuning changed the weights before the failure: other weights than the ranking's, said so
    changed = method == "full"
    if changed:
        with pytest.raises(ConfigError, match="the selection comes from a ranking of model"):
            finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config(method, save_adapter=False))
    config = quick_config(method, save_adapter=False)
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, config, ignore_fingerprint=changed)
    assert rep.steps == 1


def test_a_failed_lora_injection_is_taken_out_again(monkeypatch):
    from layerscope.core.errors import TrainingError
    from layerscope.training import lora

    model, _, sel = setup(mode="top", fraction=0.25)
    before = model_state(model)
    monkeypatch.setattr(lora, "lora_adapted_paths", lambda peft_model: [])  # peft "adapted" nothing
    with pytest.raises(TrainingError, match="different module set"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config("lora"))
    assert model_state(model) == before
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_a_failure_after_training_keeps_the_adapter_and_gives_the_model_back(monkeypatch, tmp_path):
    from layerscope.core.errors import TrainingError
    from layerscope.training import finetuning

    model, _, sel = setup(mode="top", fraction=0.25)
    before = model_state(model)

    def fail(*args, **kwargs):
        raise TrainingError("evaluation broke")

    monkeypatch.setattr(finetuning, "evaluate_after", fail)
    config = quick_config("lora", out_dir=str(tmp_path), gradient_checkpointing=True)  # the Trainer switches it on
    with pytest.raises(TrainingError, match="evaluation broke; the trained adapter is saved in"):
        finetune(model, TinyTokenizer(), TRAIN, HELD, sel, config)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and not (tmp_path / "report.json").exists()
    assert model_state(model) == before


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("training", [False, True])
def test_the_trained_model_is_left_in_the_mode_it_came_in(method, training):
    model, _, sel = setup(mode="top", fraction=0.25)
    model.train(training)
    rep = finetune(model, TinyTokenizer(), TRAIN, HELD, sel, quick_config(method, save_adapter=False))
    assert {m.training for m in rep.trained_model.modules()} == {training}
    assert {m.training for m in model.modules()} == {training}


@pytest.mark.parametrize(
    "field,value,flag",
    [
        ("batch_size", "2", r"--batch-size \(batch_size\)"),
        ("max_steps", 1.5, r"--max-steps \(max_steps\)"),
        ("max_steps", None, r"--max-steps \(max_steps\)"),
        ("max_steps", 4.0, r"--max-steps \(max_steps\)"),
        ("lora_r", True, r"--lora-r \(lora_r\)"),
        ("seed", 1.0, r"--seed \(seed\)"),
        ("eval_limit", 2.5, r"--eval-limit \(eval_limit\)"),
        ("warmup_steps", "3", "finetune option warmup_steps"),
        ("lr", "1e-3", r"--lr \(lr\)"),
        ("lora_alpha", "16", r"--lora-alpha \(lora_alpha\)"),
        ("lora_dropout", None, "finetune option lora_dropout"),
        ("max_grad_norm", True, "finetune option max_grad_norm"),
    ],
)
def test_config_refuses_a_value_of_the_wrong_type(field, value, flag):
    with pytest.raises(ConfigError, match=rf"^{flag} must be a (whole|finite) number, got {re.escape(repr(value))}$"):
        FinetuneConfig(**{field: value})


def test_config_takes_whole_and_real_numbers_where_numbers_go():
    cfg = FinetuneConfig(lr=1, lora_alpha=16, lora_dropout=0, weight_decay=0.01, eval_limit=None)
    assert cfg.learning_rate == 1.0 and cfg.lora_alpha == 16


def test_config_takes_one_eval_task_as_a_string():
    """``eval_tasks="arc_easy"`` was iterated as characters ("unknown task 'a'"): one string is one task."""
    from pathlib import Path

    assert FinetuneConfig(eval_tasks="arc_easy").eval_tasks == ["arc_easy"]
    assert FinetuneConfig(eval_tasks=("arc_easy", Path("mc.jsonl"))).eval_tasks == ["arc_easy", "mc.jsonl"]
    assert FinetuneConfig().eval_tasks == []
    with pytest.raises(ConfigError, match=r"^--eval-tasks \(eval_tasks\) must be a task name or file, .* got int$"):
        FinetuneConfig(eval_tasks=["arc_easy", 3])
    with pytest.raises(ConfigError, match=r"got dict$"):
        FinetuneConfig(eval_tasks={"arc_easy": 1})


def stories_ranking(stories_path, granularity: str, score) -> LayerImportance:
    """A ranking of stories260K's players at ``granularity``, player i scored ``score(i)``."""
    from layerscope.core.models import load_model

    loaded = load_model(str(stories_path))
    lm = build_layer_map(loaded.model)
    players = lm.players(granularity)
    scores = [score(i) for i in range(len(players))]
    return LayerImportance("t", granularity, players, scores, model=model_info(loaded.model, lm, "s"))


def test_cli_finetune_on_stories(tmp_path, stories_path, shared_dir, capsys):
    from layerscope.cli.app import main

    imp = stories_ranking(stories_path, "sublayer", lambda i: float(i % 3))
    players = imp.players
    imp_path = imp.save(tmp_path / "imp.json")
    out = tmp_path / "run"
    data = str(shared_dir / "data/alignment/alpaca_gpt4_1k.json")
    rc = main(
        [
            "finetune",
            "--model",
            str(stories_path),
            "--data",
            data,
            "--limit",
            "12",
            "--importance",
            str(imp_path),
            "--mode",
            "freeze-bottom",
            "--fraction",
            "0.25",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "report.json").read_text())
    assert d["selection"]["mode"] == "freeze-bottom" and d["steps"] == 2
    assert (out / "adapter" / "adapter_config.json").exists()
    captured = capsys.readouterr()
    printed = captured.out
    assert "backward stops at block" in printed and "holds an earlier run" not in captured.err
    lowest_block = min(int(m.split(".")[1]) for m in d["selection"]["modules"])
    assert lowest_block == 0 and "in the backward; --min-block B" in printed  # the hint names the cut option

    # --min-block: the same budget, moved above the cut, and the backward stops there
    cut = tmp_path / "cut"
    rc = main(
        [
            "finetune",
            "--model",
            str(stories_path),
            "--data",
            data,
            "--limit",
            "12",
            "--importance",
            str(imp_path),
            "--mode",
            "top",
            "--fraction",
            "0.3",
            "--min-block",
            "3",
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--out",
            str(cut),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    d = json.loads((cut / "report.json").read_text())
    assert d["selection"]["min_block"] == 3 and len(d["selection"]["players"]) == 3  # ceil(0.3 * 10 sub-layers)
    assert min(int(m.split(".")[1]) for m in d["selection"]["modules"]) == 3
    printed = capsys.readouterr().out
    assert "backward stops at block 3" in printed and "--min-block B" not in printed

    other = LayerImportance(
        method="t",
        granularity="sublayer",
        players=players,
        scores=[0.0] * len(players),
        model={**imp.model, "fingerprint": "0000000000000000"},
    )
    rc = main(
        [
            "finetune",
            "--model",
            str(stories_path),
            "--data",
            data,
            "--importance",
            str(other.save(tmp_path / "other.json")),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 2 and "fingerprint" in capsys.readouterr().err


def test_timing_batch_fills_the_sequence_length(stories, shared_dir):
    from layerscope.training import timing_batch

    _, tok = stories
    b = timing_batch(str(shared_dir / "data/alignment/alpaca_gpt4_1k.json"), tok, batch_size=4, seq_len=64)
    assert b["input_ids"].shape == (4, 64) and bool(b["attention_mask"].all())
    again = timing_batch(str(shared_dir / "data/alignment/alpaca_gpt4_1k.json"), tok, batch_size=4, seq_len=64)
    assert torch.equal(again["input_ids"], b["input_ids"])  # the same batch every time


def test_a_run_into_the_folder_of_an_earlier_one_says_it_replaces_it(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    args = ["finetune", "--model", str(stories_path), "--data", "demo", "--mode", "all", "--max-steps", "1"]
    args += ["--batch-size", "2", "--seq-len", "64", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 0 and "holds an earlier run" not in capsys.readouterr().err
    assert main([*args, "--seed", "1"]) == 0
    assert "holds an earlier run; its report.json and adapter/ are replaced" in capsys.readouterr().err
    # an earlier run's checkpoints there: refused before the model loads, and before any note says "replaced"
    assert main([*args, "--save-checkpoints"]) == 0
    capsys.readouterr()
    with mock.patch("layerscope.cli.finetune.load_from_args", side_effect=AssertionError("model loaded")):
        assert main([*args, "--save-checkpoints"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints holds checkpoints of an earlier run; pass --resume" in err and "replaced" not in err


def test_a_failed_run_removes_the_output_folder_it_made_while_empty(tmp_path, stories_path, capsys):
    """A run that diverges made --out to check it can be written; an empty folder left behind looked like a
    run's output. A folder that was there before stays."""
    from layerscope.cli.app import main

    args = ["finetune", "--model", str(stories_path), "--data", "demo", "--mode", "all", "--method", "full"]
    args += ["--max-steps", "2", "--batch-size", "2", "--seq-len", "64", "--no-progress", "--lr", "1e30"]
    assert main([*args, "--out", str(tmp_path / "new" / "run")]) == 2
    assert "lower --lr" in capsys.readouterr().err
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()
    assert main([*args, "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()


def test_selection_seed_keeps_one_random_draw_under_several_training_seeds(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    imp = stories_ranking(stories_path, "module", lambda i: float(i))
    imp_path = str(imp.save(tmp_path / "imp.json"))
    base = ["finetune", "--model", str(stories_path), "--data", "demo", "--importance", imp_path, "--mode", "random"]
    base += ["--fraction", "0.2", "--max-steps", "1", "--batch-size", "2", "--seq-len", "64", "--no-progress"]

    def draw(*extra: str) -> list[str]:
        out = tmp_path / "_".join(extra)
        assert main([*base, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        return json.loads((out / "report.json").read_text())["selection"]["modules"]

    fixed = [draw("--seed", s, "--selection-seed", "7") for s in ("1", "2")]
    assert fixed[0] == fixed[1]  # one draw, two training seeds
    assert draw("--seed", "1") != draw("--seed", "2")  # without it, --seed draws too
    assert draw("--seed", "7") == fixed[0]  # and the same --seed gives the same draw


# ----------------------------------------------------------------------------- --resume


def checkpointed(tmp_path, method: str = "lora", **kw) -> FinetuneConfig:
    """A run keeping a Trainer checkpoint every 2 steps (and at its last step) under ``tmp_path``."""
    options = dict(max_steps=3, batch_size=4, lr=1e-2, eval_before=False, logging_steps=1)
    options.update(kw)
    return FinetuneConfig(method=method, out_dir=str(tmp_path), save_checkpoints=True, checkpoint_every=2, **options)


def run_checkpointed(tmp_path, method: str = "lora", **kw):
    """A run of the tiny model's top block keeping checkpoints; (report, selection)."""
    _, _, sel = setup(mode="top", fraction=0.25)
    return finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, method, **kw)), sel


def killed_after_step_2(tmp_path, method: str = "lora", **kw):
    """A 3-step run, then its last checkpoint removed: as if killed after the checkpoint at step 2."""
    import shutil

    rep, sel = run_checkpointed(tmp_path, method, **kw)
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-3")
    return rep, sel


@pytest.fixture
def trained_steps(monkeypatch):
    """The optimizer steps the HF Trainer trains from here on (1-based)."""
    import transformers

    real, steps = transformers.Trainer.training_step, []

    def counted(trainer, *a, **k):
        steps.append(trainer.state.global_step + 1)
        return real(trainer, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", counted)
    return steps


def test_resume_refuses_checkpoints_of_other_training_settings_in_one_line(tmp_path, trained_steps):
    _, sel = killed_after_step_2(tmp_path)
    trained_steps.clear()
    run = json.loads((tmp_path / "checkpoints" / "checkpoint-2" / "layerscope_run.json").read_text())
    assert run["config"]["learning_rate"] == 1e-2 and run["modules"] == sorted(sel.modules) and run["data"]
    refusals = [  # (what changes, config options, train data, selection)
        ("--lr 0.01 -> 0.02", dict(lr=2e-2), TRAIN, sel),
        ("--max-steps 3 -> 4; --seed 0 -> 1", dict(max_steps=4, seed=1), TRAIN, sel),
        ("--lora-r 8 -> 4", dict(lora_r=4), TRAIN, sel),
        ("training data differ", {}, random_sft(12, 5), sel),
        ("selected modules (7 -> 14, e.g. layers.2.", {}, TRAIN, setup(mode="top", fraction=0.5)[2]),
    ]
    for why, options, train, selection in refusals:
        model = setup()[0]
        with pytest.raises(ConfigError) as e:
            finetune(model, TinyTokenizer(), train, HELD, selection, checkpointed(tmp_path, resume=True, **options))
        message = str(e.value)
        assert message.startswith(f"{tmp_path}/checkpoints/checkpoint-2: checkpoint of a run with other settings (")
        assert why in message and "resume with the same options and data, or use another --out" in message
        assert "\n" not in message
    other_weights = tiny_model("llama", n_layers=4, seed=1)
    with pytest.raises(ConfigError, match=r"\(model weights differ\)"):  # the checkpoint's check, past the selection's
        config = checkpointed(tmp_path, resume=True)
        finetune(other_weights, TinyTokenizer(), TRAIN, HELD, sel, config, ignore_fingerprint=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # sums split over other threads: other last digits on the CPU
    try:
        with pytest.raises(ConfigError, match=rf"\(--threads {threads} -> {threads + 1}\)"):
            finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, resume=True))
    finally:
        torch.set_num_threads(threads)
    assert trained_steps == [] and not (tmp_path / "checkpoints" / "checkpoint-3").exists()
    # options that do not change what is trained do not block it
    same = checkpointed(
        tmp_path, resume=True, eval_before=True, eval_batch_size=2, logging_steps=2, progress=True,
        gradient_checkpointing=True, save_adapter=False,
    )  # fmt: skip
    rep = finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, same)
    assert trained_steps == [3] and rep.steps == 3


def test_resume_of_checkpoints_without_a_fingerprint_goes_on_with_a_note(tmp_path, trained_steps, capsys):
    _, sel = killed_after_step_2(tmp_path)
    (tmp_path / "checkpoints" / "checkpoint-2" / "layerscope_run.json").unlink()  # an older layerscope's
    trained_steps.clear()
    rep = finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, resume=True, lr=2e-2))
    assert trained_steps == [3] and rep.steps == 3
    err = capsys.readouterr().err
    assert f"note: {tmp_path}/checkpoints/checkpoint-2 records no run fingerprint" in err
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "layerscope_run.json").is_file()  # its own checkpoints have one


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_of_a_run_that_finished_training_trains_no_step_more(tmp_path, method, trained_steps, capsys):
    from safetensors.torch import load_file

    _, _, sel = setup(mode="top", fraction=0.25)
    first = finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, method))
    saved = tmp_path / ("adapter" if method == "lora" else "trained")
    name = "adapter_model.safetensors" if method == "lora" else "trained_weights.safetensors"
    weights = load_file(saved / name)
    assert trained_steps == [1, 2, 3]
    trained_steps.clear()
    rep = finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, method, resume=True))
    assert trained_steps == [] and rep.steps == 3
    assert "checkpoint-3 already reached --max-steps 3: nothing left to train" in capsys.readouterr().err
    assert rep.train_loss == first.train_loss and rep.heldout_loss == first.heldout_loss
    # no step ran here: no speed measured, rather than a speed of 0 that reads as a measurement
    assert first.time_per_step_s > 0 and first.tokens_per_s > 0
    assert (rep.time_per_step_s, rep.time_per_step_median_s, rep.cpu_time_per_step_s, rep.tokens_per_s) == (None,) * 4
    again = load_file(saved / name)  # the checkpoint's weights were loaded, and saved again
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[:2] == ["checkpoint-2", "checkpoint-3"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "file,damage,why",
    [
        ("optimizer.pt", _truncate, "damaged checkpoint .*checkpoint-4 \\(optimizer.pt: not a complete torch.save"),
        ("rng_state.pth", lambda p: p.write_bytes(b"garbage"), "damaged .*\\(rng_state.pth: not a complete"),
        ("adapter_model.safetensors", _truncate, "damaged .*\\(adapter_model.safetensors: not a complete safet"),
        ("trainer_state.json", lambda p: p.write_text("{"), "incomplete .*\\(no readable trainer_state.json\\)"),
        ("layerscope_run.json", _truncate, "damaged .*\\(layerscope_run.json: not valid JSON"),
    ],
    ids=["optimizer-truncated", "rng-state-garbage", "adapter-truncated", "trainer-state-torn", "fingerprint-torn"],
)
def test_resume_passes_over_a_damaged_checkpoint_to_the_one_before(tmp_path, trained_steps, capsys, file, damage, why):
    _, sel = run_checkpointed(tmp_path, max_steps=4)  # checkpoints 2 and 4
    damage(tmp_path / "checkpoints" / "checkpoint-4" / file)
    trained_steps.clear()
    rep = finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, resume=True, max_steps=4))
    assert trained_steps == [3, 4] and rep.steps == 4  # from checkpoint-2
    err = capsys.readouterr().err
    assert re.search(f"note: skipping the {why}", err) and "); delete that folder" in err, err
    assert "checkpoint-4 (" in err


def test_a_checkpoint_the_trainer_cannot_load_is_refused_in_one_line(tmp_path, trained_steps):
    """Damage the cheap checks do not see (here an optimizer.pt of something else) fails while the Trainer
    restores the checkpoint, before any step: one line naming the folder, not a traceback."""
    _, sel = killed_after_step_2(tmp_path)
    torch.save({"not": "an optimizer"}, tmp_path / "checkpoints" / "checkpoint-2" / "optimizer.pt")
    trained_steps.clear()
    with pytest.raises(ConfigError) as e:
        finetune(setup()[0], TinyTokenizer(), TRAIN, HELD, sel, checkpointed(tmp_path, resume=True))
    assert re.fullmatch(
        rf"{tmp_path}/checkpoints/checkpoint-2: cannot resume from this checkpoint \(\w+: .*\); delete that folder "
        "to resume from the one before it",
        str(e.value),
    ), str(e.value)
    assert trained_steps == []


def test_cli_resume_with_other_training_options_is_one_line_and_exit_2(tmp_path, stories_path, capsys):
    from layerscope.cli.app import main

    args = ["finetune", "--model", str(stories_path), "--data", "demo", "--mode", "all", "--max-steps", "2"]
    args += ["--batch-size", "2", "--seq-len", "64", "--no-progress", "--out", str(tmp_path), "--save-checkpoints"]
    args += ["--checkpoint-every", "1", "--limit", "16"]
    assert main(args) == 0, capsys.readouterr().err
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-2")  # killed after step 1
    capsys.readouterr()
    assert main([*args, "--resume", "--lr", "1e-3", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n")  # a data note before it, then the error in one line
    assert err.splitlines()[-1].startswith(f"layerscope finetune: error: {tmp_path}/checkpoints/checkpoint-1: ")
    assert "(--batch-size 2 -> 1; --lr 0.0002 -> 0.001)" in err.splitlines()[-1]
    # evaluation and output options are free to change
    assert main([*args, "--resume", "--eval-batch-size", "3"]) == 0  # (--eval-limit alone is refused: no task)
    assert f"note: resuming from {tmp_path}/checkpoints/checkpoint-1 (step 1 of 2)" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text())["steps"] == 2


_COUNT_OWNED = """
import json, os, sys
from layerscope.core import distributed
real, calls = distributed.owned, []
def owned(n):
    mine = real(n)
    calls.append([n, len(mine)])
    return mine
distributed.owned = owned
from layerscope.cli.app import main
code = main(sys.argv[2:])
with open(os.path.join(sys.argv[1], "owned.%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(calls, f)
sys.exit(code)
"""


@pytest.mark.slow
def test_under_ddp_the_held_out_evaluations_are_split_over_the_processes(tmp_path, stories_path, free_port):
    """Each process evaluated every held-out batch, before and after training; now each takes its share
    and the sums are added (the numbers stay those of one process: core/distributed.py). Before training
    the process group is joined first, and the Trainer takes it as it finds it."""
    import os
    import shutil
    import subprocess

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate launcher not on PATH")
    script = tmp_path / "count_owned.py"
    script.write_text(_COUNT_OWNED)
    out = tmp_path / "ft"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--main_process_port", str(free_port)]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path), "finetune"]
    cmd += ["--model", str(stories_path), "--data", "demo", "--mode", "all", "--max-steps", "2", "--batch-size", "2"]
    cmd += ["--seq-len", "64", "--eval-batch-size", "2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote ") == 1
    calls = [json.loads((tmp_path / f"owned.{rank}.json").read_text()) for rank in (0, 1)]
    (before0, after0), (before1, after1) = calls  # held-out loss before and after training
    n = before0[0]
    for mine, theirs in ((before0, before1), (after0, after1)):
        assert n > 1 and mine[0] == theirs[0] == n and mine[1] + theirs[1] == n and mine[1] < n
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["processes"] == 2 and report["steps"] == 2


def test_a_loss_task_in_eval_tasks_is_refused_by_what_it_is(tmp_path, stories_path, capsys):
    """``--eval-tasks loss:FILE`` reached the task reader as a file called "loss:FILE": "evaluation file not
    found" for a file that is there. The held-out loss is measured already: refused, naming the option."""
    from layerscope.cli.app import main

    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    with pytest.raises(ConfigError, match=r"^--eval-tasks \(eval_tasks\) loss:.*: takes multiple-choice tasks; "):
        FinetuneConfig(eval_tasks=["arc_easy", f"loss:{sft}"])
    args = ["finetune", "--model", str(stories_path), "--data", "demo", "--mode", "all", "--threads", "1"]
    args += ["--eval-tasks", f"arc_easy,loss:{sft}", "--out", str(tmp_path / "run"), "--no-progress"]
    with mock.patch("layerscope.cli.finetune.load_from_args", side_effect=AssertionError("model loaded")):
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" not in err[0], err
    assert f"--eval-tasks (eval_tasks) loss:{sft}: takes multiple-choice tasks; the held-out loss" in err[0]
