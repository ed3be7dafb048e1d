"""The Python API's refusals of what a user gets wrong and that gave a plausible but wrong number (or
a deep traceback): found by using the API the way python-api.md shows, then the way people misuse it."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from layerscope.core.data import SFTExample
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.layermap import build_layer_map
from layerscope.engine import CoalitionEngine
from layerscope.scoring import LossEvaluator


def examples(n: int = 6, length: int = 12, vocab: int = 128, seed: int = 0) -> list[SFTExample]:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(n)]
    return [SFTExample(x, [-100] * 4 + x[4:]) for x in ids]


class Tok:
    pad_token_id = 0
    eos_token_id = 1


def test_training_mode_is_refused_on_every_call_and_in_any_module():
    """model.train() after the engine was built, or one block in training mode, made every value random."""
    model = tiny_model("llama", n_layers=3)
    loss = LossEvaluator(Tok(), examples(), 4)
    engine = CoalitionEngine(model, build_layer_map(model), loss, "block")
    engine.value([0, 1, 2])
    model.train()
    with pytest.raises(ConfigError, match=r"^the model is in training mode .*call model.eval\(\)$"):
        engine.value([0, 2])
    with pytest.raises(ConfigError, match="the model is in training mode"):
        loss.evaluate(model)
    model.eval()
    model.model.layers[1].train()
    with pytest.raises(ConfigError, match=r"^the model's module 'model.layers.1' is in training mode"):
        loss.evaluate(model)
    with pytest.raises(ConfigError, match=r"^the model's module 'model.layers.1' is in training mode"):
        CoalitionEngine(model, build_layer_map(model), loss, "block")


def test_an_engine_without_a_layer_map_is_refused_naming_it():
    model = tiny_model("llama", n_layers=3)
    with pytest.raises(ConfigError, match=r"^layer_map must be a LayerMap \(build_layer_map\(model\)\), not NoneType$"):
        CoalitionEngine(model, None, LossEvaluator(Tok(), examples(), 4), "block")


def test_a_keep_mask_of_ints_is_refused_not_read_as_players():
    """[1, 1, 0, 1, 1] ("drop player 2") read as the indices {0, 1}: another coalition's value."""
    model = tiny_model("llama", n_layers=3)
    engine = CoalitionEngine(model, build_layer_map(model), LossEvaluator(Tok(), examples(), 4), "block")
    with pytest.raises(ConfigError, match=r"^player 1 is listed twice in a coalition.*not a 0/1 mask\)$"):
        engine.value([1, 1, 0])
    with pytest.raises(ConfigError, match=r"^a coalition is a set of player indices, not 3$"):
        engine.value(3)
    assert engine.value([np.int64(0), 2]) == engine.value({0, 2})


def test_similarity_refuses_a_layer_map_of_another_model():
    """A 2-block map on a 3-block model dropped the last block's score and recorded the map's count."""
    from layerscope.methods.similarity import similarity

    model, other = tiny_model("llama", n_layers=3), tiny_model("llama", n_layers=2)
    seqs = [e.input_ids for e in examples()]
    with pytest.raises(ConfigError, match=r"layer_map \(2 blocks at 'model.layers'\) is not LlamaForCausalLM's"):
        similarity(model, build_layer_map(other), seqs)
    with pytest.raises(ConfigError, match=r"layer_map \(3 blocks at 'model.layers'\) is not LlamaForCausalLM's"):
        similarity(other, build_layer_map(model), seqs)


@pytest.mark.parametrize("bad", [-1, 0, 1, 2.5, "8", True])
def test_evaluator_lengths_and_batch_sizes_are_integers_in_range(bad):
    """max_length=-1 ("no limit" to many) cut every example's last token: a wrong loss, no error."""
    from layerscope.core.tasks import MCItem, Task
    from layerscope.scoring import MCEvaluator

    with pytest.raises(ConfigError, match=rf"^max_length must be an integer >= 2 \(got {bad!r}\)$"):
        LossEvaluator(Tok(), examples(), 4, max_length=bad)
    task = Task(name="toy", items=[MCItem("Q:", ["a", "b"], 0)], chance=0.5, metric="acc", source="t", fingerprint="x")
    with pytest.raises(ConfigError, match=r"^max_length must be an integer >= 2"):
        MCEvaluator(Tok(), task, 4, max_length=bad)
    if bad not in (1,):
        with pytest.raises(ConfigError, match=r"^batch_size must be an integer >= 1"):
            LossEvaluator(Tok(), examples(), bad)


def test_sequences_past_the_context_are_refused_where_hand_built_data_meets_a_model():
    """The commands cut data to the model's context; data built in Python reached positions the model
    never learned (rotary) or an IndexError deep in torch (learned positions)."""
    from layerscope.methods.ila import ILAConfig, run_ila
    from layerscope.methods.similarity import similarity

    model = tiny_model("llama", n_layers=2)
    model.config.max_position_embeddings = 10
    long = examples(length=12)
    with pytest.raises(DataError, match=r"^the loss examples: a sequence of 12 tokens is longer than the model's "):
        LossEvaluator(Tok(), long, 4).evaluate(model)
    with pytest.raises(DataError, match=r"^sequence 0: a sequence of 12 tokens .* context of 10 positions"):
        similarity(model, build_layer_map(model), [e.input_ids for e in long])
    with pytest.raises(DataError, match=r"^sequence 0: a sequence of 12 tokens"):
        run_ila(model, Tok(), long, ILAConfig(max_steps=1, gate_steps=1, progress=False))
    bad = [SFTExample([1, 2, 3, 4], [-100, 2, 3])]
    with pytest.raises(DataError, match=r"^example 0: input_ids and labels differ in length \(4 vs 3\)$"):
        run_ila(model, Tok(), bad, ILAConfig(max_steps=1, gate_steps=1, progress=False))
    far = [SFTExample([1, 2, 300, 4], [-100, 2, 300, 4])]
    with pytest.raises(DataError, match=r"^sequence 0: token 2 is 300, not a token id of the model"):
        run_ila(model, Tok(), far, ILAConfig(max_steps=1, gate_steps=1, progress=False))


def test_run_ila_gives_the_callers_random_state_back():
    from layerscope.methods.ila import ILAConfig, run_ila

    model = tiny_model("llama", n_layers=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run_ila(model, Tok(), examples(), ILAConfig(max_steps=2, min_steps=0, gate_steps=1, progress=False, seed=7))
    assert torch.equal(torch.random.get_rng_state(), before)


def test_an_sft_data_a_path_and_a_meta_model_are_taken_or_refused_in_one_line(tmp_path):
    from layerscope.core.errors import ModelError

    class Data:  # what matters of an SFTData: its .examples
        def __init__(self, examples):
            self.examples = examples

    ex = examples()
    model = tiny_model("llama", n_layers=2)
    assert LossEvaluator(Tok(), Data(ex), 4).evaluate(model).value == LossEvaluator(Tok(), ex, 4).evaluate(model).value
    with pytest.raises(DataError, match=r"a path; load the examples first"):
        LossEvaluator(Tok(), str(tmp_path / "d.json"), 4)
    with torch.device("meta"):
        empty = tiny_model("llama", n_layers=2)
    with pytest.raises(ModelError, match=r"^LlamaForCausalLM: its weights are on the meta device"):
        LossEvaluator(Tok(), ex, 4).evaluate(empty)


def test_markdown_table_cells_keep_a_folder_name_whole():
    from layerscope.viz.report.markdown import _table

    head, _, row, _ = _table(["", "run|a", "x<b>&y"], [["run|a", "1.00", "x<b>"]])
    assert head == "|  | run\\|a | x&lt;b&gt;&amp;y |" and row == "| run\\|a | 1.00 | x&lt;b&gt; |"


@pytest.mark.parametrize("field,value", [("seed", 1.5), ("seed", "3"), ("seed", -1), ("gate_init", "3")])
def test_ila_config_refuses_a_seed_or_gate_init_of_the_wrong_type(field, value):
    """torch.manual_seed(1.5) failed as a RuntimeError once stage 1 started; gate_init="3" as a TypeError."""
    from layerscope.methods.ila import ILAConfig

    with pytest.raises(ConfigError, match=rf"\({field}\) must be|option {field} must be"):
        ILAConfig(**{field: value})


def test_finetune_config_refuses_a_scheduler_the_trainer_does_not_know():
    from layerscope.training import FinetuneConfig

    with pytest.raises(ConfigError, match=r"^finetune option lr_scheduler 'cosine_restarts' must be one of linear, "):
        FinetuneConfig(lr_scheduler="cosine_restarts")
    assert FinetuneConfig(lr_scheduler="cosine").lr_scheduler == "cosine"


def test_the_scheduler_names_are_the_installed_transformers_ones():
    from transformers import SchedulerType

    from layerscope.training.config import SCHEDULERS

    assert set(SCHEDULERS) <= {t.value for t in SchedulerType}  # every name we take, the Trainer takes


def test_numpy_integers_are_taken_where_python_ones_are():
    """A count computed with NumPy (np.int64) was refused with a message that called it out of range."""
    from layerscope.core.tasks import load_task
    from layerscope.methods.similarity import similarity
    from layerscope.training.selection import select_modules

    assert len(load_task("arc_easy", limit=np.int64(3)).items) == 3
    model = tiny_model("llama", n_layers=3)
    lm = build_layer_map(model)
    seqs = [e.input_ids for e in examples()]
    out = similarity(model, lm, seqs, window=np.int64(2), batch_size=np.int64(4))
    assert out["angular_distance"].method_config["window"] == 2
    assert select_modules(lm, None, "all", min_block=np.int64(1)).min_block == 1
    CoalitionEngine(model, lm, LossEvaluator(Tok(), examples(), 4), "block", coalition_batch=np.int64(2))


def test_commands_cut_their_sequences_to_the_models_context(stories_path, shared_dir, tmp_path, capsys):
    """similarity, prune and prune-curve read --data at --max-length 512; on a model of a shorter context
    the new check refused what they had never cut. They cut it now, with a note, as load_sft does."""
    from transformers import AutoTokenizer

    from layerscope.methods.similarity import load_sequences
    from layerscope.pruning.heal import load_heal_data

    tok = AutoTokenizer.from_pretrained(stories_path)
    story = tmp_path / "story.txt"
    story.write_text("Once upon a time there was a little cat who liked to play in the sun. " * 40)
    seqs, data = load_sequences(str(story), tok, max_length=512, limit=4, context_length=32)
    assert max(len(s) for s in seqs) == 32 and data["max_length"] == 32
    assert "--max-length 512 is past the model's context of 32 positions" in capsys.readouterr().err
    train, held = load_heal_data(str(shared_dir / "data" / "alignment" / "lima.json"), tok, 512, context_length=48)
    assert max(len(e.input_ids) for e in train.examples + held.examples) <= 48


def test_numpy_numbers_are_numbers_and_a_seed_is_checked():
    """NumPy scalars (float32 fractions, int64 step counts) are taken as the numbers they are, and stored as
    Python ones; a Shapley seed that is no integer is refused naming it (numpy's own error named none)."""
    import numpy as np

    from layerscope.core.errors import ConfigError
    from layerscope.core.importance import top_k_count
    from layerscope.methods.ila import ILAConfig
    from layerscope.training import FinetuneConfig

    assert top_k_count(np.float32(0.3), 10) == 3
    assert type(FinetuneConfig(max_steps=np.int64(3)).max_steps) is int
    assert type(ILAConfig(max_steps=np.int64(4), min_steps=np.int64(1)).max_steps) is int
    for bad in (1.5, True, "3"):
        with pytest.raises(ConfigError, match="max.steps"):
            FinetuneConfig(max_steps=bad)
    from layerscope.methods.shapley import shapley_importance

    model = tiny_model("llama", n_layers=3)
    engine = CoalitionEngine(model, build_layer_map(model), LossEvaluator(Tok(), examples(), 4), "block")
    for seed in (np.float32(0), "0", -1):
        with pytest.raises(ConfigError, match=r"^seed must be an integer >= 0"):
            shapley_importance(engine, "permutation", budget=12, seed=seed)
    assert shapley_importance(engine, "permutation", budget=12, seed=np.int64(1)).seed == 1


def test_arguments_of_the_wrong_kind_are_named():
    """A dict for a config, a list for SFTData, a ranking for a selection: one line naming the argument,
    not an AttributeError from inside."""
    from tiny_models import TinyTokenizer, random_sft

    from layerscope.core.data import split_heldout
    from layerscope.methods.ila import run_ila
    from layerscope.training import FinetuneConfig, finetune, select_modules

    model = tiny_model("llama", n_layers=3)
    lm = build_layer_map(model)
    train, held = random_sft(8, 0), random_sft(4, 1)
    selection = select_modules(lm, None, "all")
    config = FinetuneConfig(max_steps=1, eval_before=False, progress=False)
    for args, named in (
        ((train, held, selection, {"max_steps": 1}), "config must be FinetuneConfig"),
        (("demo", held, selection, config), "train must be SFTData"),
        ((train, [], selection, config), "heldout must be SFTData"),
        ((train, held, ["layers.0.mlp.up_proj"], config), "selection must be Selection"),
    ):
        with pytest.raises(ConfigError, match=f"^finetune: {named}"):
            finetune(model, TinyTokenizer(), *args)
    with pytest.raises(ConfigError, match="^run_ila: config must be an ILAConfig"):
        run_ila(model, TinyTokenizer(), train, {"max_steps": 4})
    with pytest.raises(ConfigError, match="^split_heldout takes SFTData .*, not list$"):
        split_heldout(train.examples, 0.25)


def test_a_model_name_that_is_not_a_name_is_refused():
    from layerscope.methods.ablation import ablate

    model = tiny_model("llama", n_layers=3)
    engine = CoalitionEngine(model, build_layer_map(model), LossEvaluator(Tok(), examples(), 4), "block")
    with pytest.raises(ConfigError, match=r"^model_name must be a name \(a string\), not dict$"):
        ablate(engine, model_name={"name": "m"})
    assert ablate(engine, model_name="m").model["name"] == "m"


def test_a_tokenizer_that_is_not_one_is_named_before_any_text_is_tokenized(stories_path):
    """mc_evaluator('model/path', ...) failed as "'str' object is not callable" from deep in the encoding."""
    from layerscope.core.data import load_sft
    from layerscope.core.models import load_model
    from layerscope.core.tasks.types import MCItem, Task
    from layerscope.scoring.multiple_choice import mc_evaluator

    loaded = load_model(stories_path)
    items = [MCItem("The cat sat on the", ["mat", "moon"], 0), MCItem("One day, Tim went to the", ["store", "a"], 0)]
    task = Task(name="toy", items=items, chance=0.5, metric="acc", source="test", fingerprint="x")
    with pytest.raises(ConfigError, match=r"^tokenizer must be a Hugging Face tokenizer, got the name '.*stories260K'"):
        mc_evaluator(stories_path, task, 4, loaded.model)
    with pytest.raises(ConfigError, match=r"^got the LoadedModel that load_model returns: pass its \.tokenizer$"):
        mc_evaluator(loaded, task, 4, loaded.model)
    with pytest.raises(ConfigError, match=r"^tokenizer must be a Hugging Face tokenizer .*got None$"):
        load_sft("demo", None)
    assert mc_evaluator(loaded.tokenizer, task, 4, loaded.model).n_items == 2
