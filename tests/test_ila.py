"""ILA: gates are exactly peft's LoRA update scaled, stage 1 stops as documented, stage 2
finds a planted useful module, runs are deterministic and leave the model as they found it."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_model

from layerscope.core.data import SFTExample
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import build_layer_map
from layerscope.core.models import weights_fingerprint
from layerscope.methods.ila import ILAConfig, lora_layers, run_ila, wrap_lora
from layerscope.methods.ila.gates import LoraGates, StabilityTracker

FAST = dict(progress=False, batch_size=4)


def random_examples(n: int = 12, length: int = 20, prompt: int = 6, vocab: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        out.append(SFTExample(ids, [-100] * prompt + ids[prompt:]))
    return out


def lora_with_random_b(model, seed: int = 0, scale: float = 0.05):
    """A peft LoRA model whose B factors are non-zero, so every module has a real delta."""
    lm = build_layer_map(model)
    pm = wrap_lora(model, lm, ILAConfig(r=4, alpha=8, dropout=0.0, **FAST))
    layers = lora_layers(pm, lm)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            b = layer.lora_B["default"].weight
            b.copy_(scale * torch.randn(b.shape, generator=g))
    pm.eval()
    return pm, lm, layers


def logits(pm, ids):
    with torch.no_grad():
        return pm(input_ids=ids).logits


# ---- gates --------------------------------------------------------------------------------


def test_gates_at_one_are_exactly_lora_and_at_init_close():
    pm, lm, layers = lora_with_random_b(tiny_model("llama"))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    lora = logits(pm, ids)
    with pm.disable_adapter():
        base = logits(pm, ids)
    gates = LoraGates(layers, init=3.0).attach(pm.base_model.model)
    try:
        gated_init = logits(pm, ids)
        gates.force(torch.ones(len(layers)))
        gated_one = logits(pm, ids)
    finally:
        gates.detach()
    assert torch.equal(gated_one, lora)  # the hook multiplies by exactly 1.0
    # s = 3 gives gates of sigmoid(3) = 0.9526: the output moves ~4.7% of the way back to the base.
    # Stated tolerance: within 10% of the whole LoRA effect.
    effect = (lora - base).norm()
    assert effect > 1e-3
    assert (gated_init - lora).norm() <= 0.10 * effect
    assert (gated_init - lora).norm() > 0  # and it is not silently ignored
    pm.unload()


def test_gate_zero_removes_exactly_that_module():
    pm, lm, layers = lora_with_random_b(tiny_model("llama"))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    j = lm.players("module").index("layers.1.mlp.up_proj")
    gates = LoraGates(layers).attach(pm.base_model.model)
    try:
        values = torch.ones(len(layers))
        values[j] = 0.0
        gates.force(values)
        gated = logits(pm, ids)
    finally:
        gates.detach()
    with torch.no_grad():
        layers[j].lora_B["default"].weight.zero_()  # that module's LoRA disabled
    assert torch.equal(gated, logits(pm, ids))
    pm.unload()


def test_budget_gates_are_hard_top_h_with_straight_through_gradient():
    pm, lm, layers = lora_with_random_b(tiny_model("llama"))
    gates = LoraGates(layers, init=0.0, mode="budget", budget_fraction=0.3)
    with torch.no_grad():
        gates.scores.copy_(torch.linspace(-1, 1, len(layers)))
    assert gates.budget_k == math.ceil(0.3 * len(layers))
    gates.anneal(0, 10)
    assert torch.equal(gates.values().detach(), torch.ones(len(layers)))  # start: all open, exactly LoRA
    gates.anneal(10, 10)
    v = gates.values()
    assert sorted(set(v.detach().tolist())) == [0.0, 1.0] and int(v.sum()) == gates.budget_k
    assert v.detach()[-gates.budget_k :].sum() == gates.budget_k  # the highest scores are the open ones
    (v * torch.arange(len(layers), dtype=v.dtype)).sum().backward()
    assert gates.scores.grad is not None and gates.scores.grad.abs().sum() > 0  # gradient flows through sigmoid
    pm.unload()


def test_stability_ratio_matches_explicit_products():
    pm, lm, layers = lora_with_random_b(tiny_model("llama"))
    tracker = StabilityTracker(layers)
    assert tracker.check() > 0  # first check has no reference

    def products():  # explicit out x in products, in float64 like the tracker
        return [
            (m.lora_B["default"].weight.detach().double() @ m.lora_A["default"].weight.detach().double())
            * m.scaling["default"]
            for m in layers
        ]

    before = products()
    tracker.prev = tracker.snapshot()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in layers:
            m.lora_A["default"].weight.add_(0.1 * torch.randn(m.lora_A["default"].weight.shape, generator=g))
    after = products()
    diff = torch.cat([(a - b).flatten() for a, b in zip(after, before)]).norm()
    now = torch.cat([a.flatten() for a in after]).norm()
    assert tracker.check() == pytest.approx(float(diff / now), rel=1e-9)
    assert tracker.module_norms()[0] == pytest.approx(float(after[0].norm()), rel=1e-9)
    pm.unload()


# ---- stage 1 stopping ------------------------------------------------------------------------


def test_stage1_stops_when_stable_or_at_the_cap():
    ex = random_examples()
    stable = run_ila(
        tiny_model("llama"),
        None,
        ex,
        ILAConfig(max_steps=30, min_steps=0, check_every=3, eps=10.0, patience=2, gate_steps=2, **FAST),
    )
    assert stable.extras["stop_reason"] == "stable" and stable.extras["stop_step"] == 6
    assert len(stable.extras["stage1_loss"]) == 6
    floor = run_ila(
        tiny_model("llama"),
        None,
        ex,
        ILAConfig(max_steps=30, min_steps=12, check_every=3, eps=10.0, patience=2, gate_steps=2, **FAST),
    )
    assert floor.extras["stop_reason"] == "stable" and floor.extras["stop_step"] == 12
    capped = run_ila(
        tiny_model("llama"),
        None,
        ex,
        ILAConfig(max_steps=8, min_steps=0, check_every=2, eps=1e-12, gate_steps=2, **FAST),
    )
    assert capped.extras["stop_reason"] == "max_steps" and capped.extras["stop_step"] == 8
    assert [s for s, _ in capped.extras["stage1_stability"]] == [2, 4, 6, 8]
    assert stable.extras["stage1_stable"] is True and capped.extras["stage1_stable"] is False


def test_stage1_stop_report_says_stable_or_cap_and_warns_at_the_cap():
    from layerscope.methods.ila.outputs import stage1_stop_report

    line, warning = stage1_stop_report({"stop_reason": "stable", "stop_step": 6, "stage1_stable": True})
    assert line == "stage 1: stopped at step 6, stable (the LoRA update changed less than eps)" and warning is None
    line, warning = stage1_stop_report({"stop_reason": "max_steps", "stop_step": 8, "stage1_stable": False})
    assert line == "stage 1: stopped at step 8, the step cap (--max-steps), before becoming stable"
    assert "ranking may not be stable: raise --max-steps or --eps" in warning
    _, warning = stage1_stop_report({"stop_reason": "max_steps", "stop_step": 24}, cap_flag="--steps", eps_flag=None)
    assert warning.endswith("ranking may not be stable: raise --steps")
    line, warning = stage1_stop_report({"stop_reason": "loaded", "stop_step": 0, "stage1_stable": None})
    assert "saved adapter" in line and warning is None
    # stable at the cap itself (e.g. --min-steps = --max-steps): said, since the rate's decay to zero there settles
    # any update; before the cap, the plain line
    line, warning = stage1_stop_report({"stop_reason": "stable", "stop_step": 120}, cap=120)
    assert "stable at the step cap (--max-steps) itself, where the learning rate reaches zero" in line
    assert warning is None
    assert stage1_stop_report({"stop_reason": "stable", "stop_step": 96}, cap=120)[0].endswith("less than eps)")
    # a constant rate does not fall to zero at the cap: stable there is plain stable
    line, _ = stage1_stop_report({"stop_reason": "stable", "stop_step": 120}, cap=120, lr_schedule="constant")
    assert line == "stage 1: stopped at step 120, stable (the LoRA update changed less than eps)"


def test_stage1_learning_rate_decays_linearly_or_is_held_after_warm_up():
    from layerscope.methods.ila.stages import _stage1_lr_factor

    linear = _stage1_lr_factor(ILAConfig(max_steps=100, warmup_ratio=0.1))
    constant = _stage1_lr_factor(ILAConfig(max_steps=100, warmup_ratio=0.1, lr_schedule="constant"))
    assert [linear(s) for s in (0, 9)] == [constant(s) for s in (0, 9)] == [1 / 11, 10 / 11]  # same warm-up
    assert [linear(s) for s in (10, 55, 100)] == [1.0, 0.5, 0.0]
    assert [constant(s) for s in (10, 55, 100, 500)] == [1.0] * 4
    with pytest.raises(ConfigError, match=r"--lr-schedule \(lr_schedule\) 'cosine' must be one of linear, constant"):
        ILAConfig(lr_schedule="cosine")


def test_a_constant_rate_is_what_stage_1_trains_with_and_records():
    """The optimizer's rate at the last step: 0 under the linear schedule (it reaches the cap), the peak
    under the constant one; the runs differ, and each records its schedule."""
    from unittest import mock

    from layerscope.methods.ila import stages

    rates = {}
    real = stages._LoraStage.end_step

    def spy(self, step, loss):
        rates.setdefault(self.config.lr_schedule, []).append(self.scheduler.get_last_lr()[0])
        return real(self, step, loss)

    cfg = dict(max_steps=5, min_steps=5, lr=0.01, warmup_ratio=0.0, gate_steps=1, **FAST)
    with mock.patch.object(stages._LoraStage, "end_step", spy):
        lin = run_ila(tiny_model("llama"), None, random_examples(), ILAConfig(**cfg))
        const = run_ila(tiny_model("llama"), None, random_examples(), ILAConfig(**cfg, lr_schedule="constant"))
    assert rates["linear"][-1] == 0.0 and rates["constant"] == [0.01] * 5
    assert lin.method_config["lr_schedule"] == "linear" and const.method_config["lr_schedule"] == "constant"
    assert lin.scores != const.scores


def test_a_checkpoint_from_before_the_schedule_option_resumes_as_linear_and_not_as_constant(tmp_path):
    """A checkpoint written before --lr-schedule existed (no schedule in its fingerprint) trained under the
    linear schedule: it resumes so, and a constant-rate run refuses it naming both schedules."""
    from layerscope.core import checkpoint
    from layerscope.methods.ila.checkpoints import Checkpoints, run_fingerprint

    ex = random_examples(2)
    linear = run_fingerprint(ILAConfig(), ex, 0, "w", {})
    constant = run_fingerprint(ILAConfig(lr_schedule="constant"), ex, 0, "w", {})
    before = {**linear, "config": {k: v for k, v in linear["config"].items() if k != "lr_schedule"}}
    checkpoint.save(tmp_path, {"stage": "lora", "step": 2, "fingerprint": before}, {"w": torch.ones(1)})
    assert Checkpoints(tmp_path, fingerprint=linear).load()[0]["step"] == 2
    with pytest.raises(ConfigError, match=r"different run \(config lr_schedule 'linear' -> 'constant'\)"):
        Checkpoints(tmp_path, fingerprint=constant).load()
    checkpoint.save(tmp_path, {"stage": "lora", "step": 2, "fingerprint": constant}, {"w": torch.ones(1)})
    with pytest.raises(ConfigError, match=r"different run \(config lr_schedule 'constant' -> 'linear'\)"):
        Checkpoints(tmp_path, fingerprint=linear).load()


def test_cli_ila_prints_how_stage1_stopped(stories_path, tmp_path, capsys):
    from layerscope.cli.app import main

    base = ["ila", "--model", str(stories_path), "--limit", "6", "--seq-len", "128", "--batch-size", "3"]
    base += ["--min-steps", "0", "--check-every", "2", "--gate-steps", "2", "--no-progress", "--checkpoint-every", "0"]
    assert main([*base, "--max-steps", "4", "--eps", "1e-12", "--out", str(tmp_path / "cap")]) == 0
    got = capsys.readouterr()
    assert "stage 1: stopped at step 4, the step cap (--max-steps), before becoming stable" in got.out
    assert "ranking may not be stable: raise --max-steps or --eps" in got.err
    saved = LayerImportance.load(tmp_path / "cap" / "importance.json")
    assert saved.extras["stage1_stable"] is False and saved.extras["stop_reason"] == "max_steps"
    assert main([*base, "--max-steps", "20", "--eps", "100", "--patience", "1", "--out", str(tmp_path / "ok")]) == 0
    got = capsys.readouterr()
    assert "stage 1: stopped at step 2, stable" in got.out and "ranking may not be stable" not in got.err
    assert LayerImportance.load(tmp_path / "ok" / "importance.json").extras["stage1_stable"] is True


# ---- the whole run ---------------------------------------------------------------------------


def test_run_is_deterministic_complete_and_restores_the_model(tmp_path):
    model = tiny_model("llama")
    fp = weights_fingerprint(model)
    flags = [p.requires_grad for p in model.parameters()]
    ex = random_examples()
    cfg = ILAConfig(max_steps=6, min_steps=0, gate_steps=5, seed=3, save_adapter=str(tmp_path / "adapter"), **FAST)
    a = run_ila(model, None, ex, cfg, model_name="tiny")
    assert weights_fingerprint(model) == fp
    assert not any("lora" in n for n, _ in model.named_modules())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    b = run_ila(model, None, ex, ILAConfig(max_steps=6, min_steps=0, gate_steps=5, seed=3, **FAST), model_name="tiny")
    assert a.scores == b.scores  # identical, not just close
    c = run_ila(model, None, ex, ILAConfig(max_steps=6, min_steps=0, gate_steps=5, seed=4, **FAST), model_name="tiny")
    assert a.scores != c.scores

    lm = build_layer_map(model)
    assert a.method == "ila" and a.granularity == "module" and a.players == lm.players("module")
    assert a.model["fingerprint"] == fp and a.seed == 3
    assert set(a.timings) == {"stage1_s", "stage2_s", "total_s", "threads"}
    for key in (
        "stop_step",
        "stop_reason",
        "stage1_loss",
        "stage2_loss",
        "gates",
        "score_by_block",
        "score_by_type",
        "lora_delta_norm",
        "stage1_stability",
    ):
        assert key in a.extras
    assert set(a.extras["score_by_type"]) == set(lm.module_types())
    assert a.extras["untrained_modules"] == []  # every module got a gradient
    assert a.method_config["gate_steps"] == 5 and "torch" in a.versions
    back = LayerImportance.load(a.save(tmp_path / "importance.json"))
    assert back.scores == a.scores and back.extras["stop_reason"] == a.extras["stop_reason"]

    # the saved stage-1 adapter reproduces stage 2 exactly when reused
    reused = run_ila(model, None, ex, ILAConfig(adapter=str(tmp_path / "adapter"), gate_steps=5, seed=3, **FAST))
    assert reused.extras["stop_reason"] == "loaded"
    assert reused.scores == a.scores

    # an adapter of another model size (same module names, other shapes): one line, not torch's traceback
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    types = sorted({m.type for m in build_layer_map(model).linears})
    big = tf.LlamaForCausalLM(
        tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=128)
    )
    get_peft_model(big, LoraConfig(r=4, target_modules=types)).save_pretrained(tmp_path / "other_size")
    with pytest.raises(ConfigError, match="cannot load LoRA adapter .*size mismatch"):
        run_ila(tiny_model("llama", n_layers=3), None, ex, ILAConfig(adapter=str(tmp_path / "other_size"), **FAST))
    # an adapter whose updates are all zero (lora_B as initialised, or keys that matched nothing) ranks nothing
    fresh = tmp_path / "untrained"
    get_peft_model(tiny_model("llama", n_layers=3), LoraConfig(r=4, target_modules=types)).save_pretrained(fresh)
    with pytest.raises(ConfigError, match="updates are all zero"):
        run_ila(tiny_model("llama", n_layers=3), None, ex, ILAConfig(adapter=str(fresh), **FAST))


TARGET = "layers.1.mlp.down_proj"


def planted_case(tmp_path):
    """A teacher = base + a large rank-1 delta on TARGET; SFT data sampled from the teacher; a
    LoRA adapter that holds exactly that delta on TARGET and random deltas (norm = the module's
    own weight norm) on every other module. Stage 2 has to find TARGET among 21 modules."""

    def base():
        m = tiny_model("llama", n_layers=3, seed=0)
        with torch.no_grad():
            m.lm_head.weight.mul_(10.0)  # sharper next-token distributions than a random init gives
        return m

    teacher = base()
    lm = build_layer_map(teacher)
    g = torch.Generator().manual_seed(1)
    w = teacher.get_submodule(lm.linear(TARGET).path).weight
    u, v = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    u, v = u / u.norm(), v / v.norm()
    size = 40.0 * w.norm().item()
    with torch.no_grad():
        w.add_(size * torch.outer(u, v))
        ids = torch.randint(0, 128, (32, 4), generator=g)
        for _ in range(20):
            probs = torch.softmax(teacher(ids).logits[:, -1], -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
    examples = [SFTExample(r.tolist(), [-100] * 4 + r.tolist()[4:]) for r in ids]

    student = base()
    pm = wrap_lora(student, lm, ILAConfig(r=2, alpha=2, **FAST))
    with torch.no_grad():
        for m, layer in zip(lm.linears, lora_layers(pm, lm)):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if m.name == TARGET:
                a.zero_()
                b.zero_()
                a[0], b[:, 0] = v, size * u
            else:
                a.copy_(torch.randn(a.shape, generator=g))
                b.copy_(torch.randn(b.shape, generator=g))
                b.mul_(layer.base_layer.weight.norm() / (b @ a).norm())
    pm.save_pretrained(tmp_path / "planted")
    pm.unload()
    return student, examples, str(tmp_path / "planted")


@pytest.mark.parametrize("sparsity", ["penalty", "budget"])
def test_planted_useful_module_ranks_first(tmp_path, sparsity):
    student, examples, adapter = planted_case(tmp_path)
    res = run_ila(
        student,
        None,
        examples,
        ILAConfig(adapter=adapter, gate_steps=50, gate_lr=0.1, sparsity=sparsity, progress=False, batch_size=8),
    )
    assert res.ranking()[0] == TARGET
    ordered = sorted(res.scores, reverse=True)
    assert ordered[0] - ordered[1] > 0.5  # a clear margin, not a tie-break
    if sparsity == "budget":
        assert res.extras["final_mask"][res.players.index(TARGET)] == 1


class _SignActivation(torch.nn.Module):
    """A gate activation with no gradient, as a sparse-attention indexer's top-k pick has none."""

    def forward(self, x):
        return torch.sign(x)


def test_modules_no_gradient_reaches_are_named_not_ranked_silently():
    """A linear whose output only feeds a step function gets no gradient: its LoRA update stays zero and its
    gate moves with the penalty alone. The result names it (extras and a warning); the others train."""
    model = tiny_model("llama")
    model.model.layers[1].mlp.act_fn = _SignActivation()
    config = ILAConfig(max_steps=3, min_steps=0, gate_steps=3, **FAST)
    with pytest.warns(UserWarning, match=r"1 of 21 LoRA-adapted modules have a zero LoRA update \(no gradient") as w:
        res = run_ila(model, None, random_examples(), config)
    assert res.extras["untrained_modules"] == ["layers.1.mlp.gate_proj"]
    said = next(str(m.message) for m in w if "zero LoRA update" in str(m.message))  # 3 gate steps also tie: warned too
    assert "from the sparsity penalty alone, not from the data: layers.1.mlp.gate_proj" in said
    norms = dict(zip(res.players, res.extras["lora_delta_norm"]))
    assert norms.pop("layers.1.mlp.gate_proj") == 0 and min(norms.values()) > 0


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_fails_clearly(tmp_path):
    model = tiny_model("llama")
    no_response = [SFTExample([1, 2, 3, 4], [-100] * 4)]
    with pytest.raises(DataError, match="no response tokens"):
        run_ila(model, None, no_response, ILAConfig(**FAST))
    with pytest.raises(DataError, match="no SFT examples"):
        run_ila(model, None, [], ILAConfig(**FAST))
    with pytest.raises(DataError, match=r"lima.json: ILA takes SFT examples, not a path: load them with load_sft"):
        run_ila(model, None, "lima.json", ILAConfig(**FAST))
    with pytest.raises(DataError, match="ILA takes an SFTData or a list of SFTExample, not list"):
        run_ila(model, None, [[1, 2, 3]], ILAConfig(**FAST))
    for bad, name in [
        (dict(max_steps=0), "max_steps"),
        (dict(budget_fraction=1.5), "budget_fraction"),
        (dict(budget_fraction=0), "budget_fraction"),
        (dict(sparsity="l1"), "sparsity"),
        (dict(eps=-1.0), "eps"),
        (dict(lam=-0.1), "lam"),
        (dict(gate_optimizer="sgd"), "gate_optimizer"),
    ]:
        with pytest.raises(ConfigError, match=name):
            ILAConfig(**bad)
    with pytest.raises(ConfigError, match="adapter"):
        run_ila(model, None, random_examples(), ILAConfig(adapter=str(tmp_path / "missing"), **FAST))
    assert not any("lora" in n for n, _ in model.named_modules())


def test_a_model_already_carrying_peft_adapters_is_refused_before_it_is_changed():
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    modules = [n for n, _ in wrapped.named_modules()]
    flags = {n: p.requires_grad for n, p in wrapped.named_parameters()}
    fingerprint = weights_fingerprint(wrapped)
    with pytest.raises(ConfigError, match="already carries peft adapters; pass the plain base model"):
        run_ila(wrapped, None, random_examples(), ILAConfig(max_steps=2, gate_steps=1, **FAST))
    assert [n for n, _ in wrapped.named_modules()] == modules
    assert {n: p.requires_grad for n, p in wrapped.named_parameters()} == flags
    assert weights_fingerprint(wrapped) == fingerprint


def test_runs_on_a_checkpointing_model_leave_no_hook_behind():
    """peft hooks the input embeddings of a model with activation checkpointing on; unload() leaves
    that hook, so every run used to add one more."""
    model = tiny_model("llama")
    model.gradient_checkpointing_enable()
    embeddings = model.get_input_embeddings()
    hooks_before = dict(embeddings._forward_hooks)
    for _ in range(2):
        run_ila(model, None, random_examples(), ILAConfig(max_steps=2, min_steps=1, gate_steps=1, **FAST))
        assert dict(embeddings._forward_hooks) == hooks_before
    model.enable_input_require_grads()  # the user's own hook stays
    run_ila(model, None, random_examples(), ILAConfig(max_steps=2, min_steps=1, gate_steps=1, **FAST))
    assert len(embeddings._forward_hooks) == len(hooks_before) + 1


def test_out_of_memory_is_one_line_naming_the_flags_that_help(monkeypatch):
    import layerscope.methods.ila.loop as loop
    from layerscope.core.errors import TrainingError

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "_accumulate", no_memory)
    model = tiny_model("llama")
    before = weights_fingerprint(model)
    with pytest.raises(TrainingError, match="stage 1 .*out of memory at step 1 .*--batch-size") as err:
        run_ila(model, None, random_examples(), ILAConfig(**FAST))
    assert "\n" not in str(err.value)
    assert weights_fingerprint(model) == before and not hasattr(model, "peft_config")  # handed back unchanged


def test_a_regex_targeted_adapter_is_recorded_as_written():
    from peft import LoraConfig, get_peft_model

    from layerscope.methods.ila.run import _lora_options

    pm = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=r".*\.(q_proj|v_proj)"))
    assert _lora_options(pm)["target_modules"] == r".*\.(q_proj|v_proj)"  # not its characters, sorted


def test_config_errors_name_the_ila_flag_and_the_field():
    """``layerscope ila`` users read the flag they typed; Python users the field."""
    with pytest.raises(ConfigError, match=r"^--max-steps \(max_steps\) must be a positive integer, got 0$"):
        ILAConfig(max_steps=0)
    with pytest.raises(ConfigError, match=r"^--rank \(r\) must be"):
        ILAConfig(r=0)
    with pytest.raises(ConfigError, match=r"^--lambda \(lam\) must be a non-negative number"):
        ILAConfig(lam=-1.0)
    with pytest.raises(ConfigError, match=r"^--lora-dropout \(dropout\) must be in \[0, 1\)"):
        ILAConfig(dropout=1.0)
    with pytest.raises(ConfigError, match=r"^ILA option warmup_ratio must be"):  # no flag sets it
        ILAConfig(warmup_ratio=1.0)


def test_a_reused_adapter_is_recorded_with_its_own_lora_settings(tmp_path):
    """``run_ila_to_folder`` with ``config.adapter``: importance.json records the adapter's rank, alpha
    and targets (read from its adapter_config.json), not the config's, and no stage-1 training options."""
    from layerscope.methods.ila import run_ila_to_folder

    model, ex = tiny_model("llama"), random_examples()
    trained = ILAConfig(r=4, alpha=8, max_steps=3, min_steps=0, gate_steps=1, save_adapter=str(tmp_path / "a"), **FAST)
    run_ila(model, None, ex, trained)
    written = run_ila_to_folder(
        model, None, ex, ILAConfig(adapter=str(tmp_path / "a"), gate_steps=2, **FAST), tmp_path / "o"
    )
    config = LayerImportance.load(written.importance).method_config
    assert (config["r"], config["alpha"]) == (4, 8.0)  # ILAConfig's defaults are r=8, alpha=16
    assert config["target_modules"] == sorted(build_layer_map(model).module_types())
    assert all(config[k] is None for k in ("lr", "max_steps", "min_steps", "eps", "check_every", "patience"))
    assert config["gate_steps"] == 2 and config["adapter"] == str(tmp_path / "a")


def test_stage1_options_with_a_reused_adapter_are_refused():
    """``adapter=`` skips stage 1, so a stage-1 field set away from its default would have no effect (the
    adapter's own r is used and recorded): refused naming the field, as ``layerscope ila --adapter --rank``."""
    with pytest.raises(ConfigError, match=r"^ILAConfig r=16: stage-1 option, but adapter= skips stage 1 .*drop it$"):
        ILAConfig(adapter="runs/x/adapter", r=16)
    with pytest.raises(ConfigError, match=r"^ILAConfig lr=0\.01, warmup_ratio=0\.2: stage-1 options, .*drop them$"):
        ILAConfig(adapter="runs/x/adapter", lr=0.01, warmup_ratio=0.2)
    # the defaults written out, and stage-2 options, are fine with an adapter; stage-1 options without one too
    assert ILAConfig(adapter="runs/x/adapter", r=8, alpha=16.0, gate_steps=5, lam=0.5).r == 8
    assert ILAConfig(r=16).r == 16


def test_the_other_sparsity_modes_options_are_refused_and_recorded_as_none():
    """``lam`` weighs the penalty mode's penalty, ``budget_fraction`` / ``budget_warmup`` shape the budget
    mode's mask: set away from their defaults under the other mode they would have no effect (refused, as
    ``layerscope ila`` refuses --lambda / --budget-fraction), and a result records them as None there."""
    from layerscope.methods.ila.run import _method_config

    with pytest.raises(ConfigError, match=r"^ILAConfig budget_fraction=0\.5: sparsity='budget' option, .*drop it"):
        ILAConfig(budget_fraction=0.5)
    with pytest.raises(ConfigError, match=r"^ILAConfig budget_fraction=0\.5, budget_warmup=0\.2: .*drop them"):
        ILAConfig(budget_fraction=0.5, budget_warmup=0.2)
    with pytest.raises(ConfigError, match=r"^ILAConfig lam=2\.0: sparsity='penalty' option, but sparsity='budget'"):
        ILAConfig(sparsity="budget", lam=2.0)
    with pytest.raises(ConfigError, match="budget_fraction"):  # out of range: said first
        ILAConfig(budget_fraction=1.5)
    assert ILAConfig(sparsity="budget", budget_fraction=0.5, budget_warmup=0.2).budget_fraction == 0.5
    assert ILAConfig(lam=3.0, budget_fraction=0.3).lam == 3.0  # the defaults written out are fine
    penalty = _method_config(ILAConfig(lam=3.0), {})
    assert penalty["lam"] == 3.0 and penalty["budget_fraction"] is None and penalty["budget_warmup"] is None
    budget = _method_config(ILAConfig(sparsity="budget", budget_fraction=0.5), {})
    assert budget["lam"] is None and (budget["budget_fraction"], budget["budget_warmup"]) == (0.5, 0.5)


# ---- an earlier run's result in --out; --resume from a damaged checkpoint or with other threads ----------


class Killed(Exception):
    """Stands for a kill once the run has started."""


def _earlier_ila_result(out) -> None:
    out.mkdir(parents=True, exist_ok=True)
    players, scores = ["layers.0.self_attn.q_proj", "layers.0.mlp.up_proj"], [1.0, 0.5]
    LayerImportance(method="ila", granularity="module", players=players, scores=scores, model={"name": "m"}).save(
        out / "importance.json"
    )
    for chart in ("heatmap.png", "loss.png"):
        (out / chart).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume-without-checkpoint"])
def test_a_killed_ila_rerun_leaves_the_earlier_result(tmp_path, monkeypatch, resume):
    """Nothing of an earlier result goes before this run's is written: a kill during training leaves it whole."""
    import layerscope.methods.ila.outputs as outputs

    out = tmp_path / "o"
    _earlier_ila_result(out)
    (out / "mine.txt").write_text("kept\n")
    before = sorted(p.name for p in out.iterdir())

    def killed(*a, **k):
        assert (out / "importance.json").is_file()  # still there while the run goes
        raise Killed

    monkeypatch.setattr(outputs, "run_ila", killed)
    notes: list[str] = []
    with pytest.raises(Killed):
        outputs.run_ila_to_folder(
            tiny_model("llama"), None, [], ILAConfig(**FAST), out, resume=resume, note=notes.append
        )
    assert sorted(p.name for p in out.iterdir()) == before and (out / "adapter" / "adapter_config.json").is_file()
    assert notes == []


def test_a_resumed_ila_run_and_a_reused_adapter_keep_what_they_need(tmp_path, monkeypatch):
    import layerscope.methods.ila.outputs as outputs
    from layerscope.core import checkpoint

    def killed(*a, **k):
        raise Killed

    monkeypatch.setattr(outputs, "run_ila", killed)
    out = tmp_path / "resumed"
    _earlier_ila_result(out)
    checkpoint.save(out / "checkpoint", {"stage": "lora", "step": 2}, {"w": torch.ones(1)})
    with pytest.raises(Killed):  # a checkpoint to continue: the run is the same one, its result stays
        outputs.run_ila_to_folder(tiny_model("llama"), None, [], ILAConfig(**FAST), out, resume=True)
    assert (out / "importance.json").is_file() and (out / "adapter").is_dir()

    out = tmp_path / "reused"
    _earlier_ila_result(out)
    config = ILAConfig(adapter=str(out / "adapter"), **FAST)  # --adapter OUT/adapter: it must stay
    with pytest.raises(Killed):
        outputs.run_ila_to_folder(tiny_model("llama"), None, [], config, out)
    assert (out / "importance.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()


def _ila_cli(stories_path, out, *extra):
    base = ["ila", "--model", str(stories_path), "--limit", "6", "--seq-len", "128", "--batch-size", "3"]
    return [
        *base,
        "--max-steps",
        "2",
        "--min-steps",
        "1",
        "--gate-steps",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_resume_from_a_truncated_checkpoint_is_one_line_before_the_model_loads(stories_path, tmp_path, capsys):
    from unittest import mock

    from layerscope.cli.app import main
    from layerscope.core import checkpoint

    ckpt = tmp_path / "o" / "checkpoint"
    path = checkpoint.save(ckpt, {"stage": "lora", "step": 2}, {"w": torch.arange(100.0)})
    path.write_bytes(path.read_bytes()[:-40])  # cut short (a copy that did not finish, a full disk)
    with mock.patch("layerscope.core.models.load_model", side_effect=AssertionError("model loaded")):
        assert main(_ila_cli(stories_path, tmp_path / "o", "--resume")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"layerscope ila: error: {path}: checkpoint unreadable ("), err
    assert f"delete {ckpt} to start over, or run without --resume" in err[0]


def test_cli_resume_with_another_thread_count_is_refused(stories_path, tmp_path, capsys):
    from layerscope.cli.app import main
    from layerscope.core import checkpoint

    ckpt = tmp_path / "o" / "checkpoint"
    other = torch.get_num_threads() + 1
    checkpoint.save(ckpt, {"stage": "lora", "step": 2, "threads": other}, {"w": torch.ones(1)})
    assert main(_ila_cli(stories_path, tmp_path / "o", "--resume")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(err) == 1 and f"checkpoint written with {other} CPU threads" in err[0], err
    assert f"resume with --threads {other}, or run without --resume" in err[0]
    assert checkpoint.read_header(ckpt)["step"] == 2  # refused, not touched


def test_gates_that_never_separate_the_modules_are_warned_of_not_ranked_silently():
    """Gates that barely move (a tiny --gate-lr here; identical data did it in a user's run) leave every
    score the same: the ranking would be layer order. run_ila says so where it is made, not only later
    when a selection is taken from it."""
    from layerscope.core.ties import TiedRankingWarning, ranking_tie_warning

    config = ILAConfig(max_steps=2, min_steps=0, gate_steps=1, gate_lr=1e-12, **FAST)
    with pytest.warns(TiedRankingWarning, match="every score of the ila ranking .* layer, not importance") as w:
        res = run_ila(tiny_model("llama"), None, random_examples(), config)
    assert res.tied_fraction() == 1.0 and "--gate-steps" in str(w[-1].message)
    assert ranking_tie_warning(res) is not None


def test_a_ranking_is_warned_of_when_half_its_scores_tie_and_not_for_a_pair():
    from layerscope.core.ties import ranking_tie_warning

    res = LayerImportance(
        method="ila",
        model={"name": "m"},
        granularity="module",
        players=[f"layers.{i}.mlp.down_proj" for i in range(6)],
        scores=[1.0, 2.0, 3.0, 4.0, 4.0, 5.0],
    )
    assert ranking_tie_warning(res) is None  # one tied pair: only a selection that splits it is told
    res.scores = [1.0, 1.0, 2.0, 2.0, 2.0, 5.0]
    assert ranking_tie_warning(res).startswith("5 of the 6 scores of the ila ranking tie with another")
