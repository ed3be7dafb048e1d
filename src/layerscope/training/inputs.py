"""What a fine-tuning or export run starts from: a ranking, checked against the model and turned
into a module selection, and the training and held-out data. The ``finetune`` and ``export``
commands only parse options and call these."""

from __future__ import annotations

import sys

from layerscope.core.errors import ConfigError, DataError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import LayerMap
from layerscope.training.selection import Selection, select_modules
from layerscope.training.virtual_layermap import layer_map_from_importance

NEEDS_RANKING = ("top", "freeze-bottom", "random-matched")  # the modes that read a ranking; the others may use one


def load_ranking(path: str | None, mode: str) -> LayerImportance | None:
    """The importance ranking at ``path``, or None when no path is given and ``mode`` needs none."""
    if mode in NEEDS_RANKING and not path:
        raise ConfigError(f"--mode {mode} needs --importance FILE")
    return LayerImportance.load(path) if path else None


def ranking_at_chance_note(importance: LayerImportance | None, mode: str) -> str | None:
    """One line when ``mode`` selects by a ranking measured on a task where the full model is at chance:
    its scores are mostly noise, and so is a selection made from them (as ``report`` warns)."""
    if importance is None or mode not in NEEDS_RANKING:
        return None
    from layerscope.methods.ablation import at_chance

    full, chance = importance.baseline.get("full"), importance.baseline.get("chance")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (full, chance))
    if not numbers or not at_chance(float(full), float(chance)):
        return None
    return (
        f"the {importance.method} ranking was measured where the full model scores {full:.4g}, no better than "
        f"chance ({chance:.4g}): its scores mean little, and so does a selection by them (rank on an easier "
        "task, or on --task loss:FILE)"
    )


def choose_modules(
    importance: LayerImportance | None,
    mode: str,
    fraction: float | None = None,
    seed: int = 0,
    *,
    model=None,
    min_block: int | None = None,
    ignore_fingerprint: bool = False,
    where: str = "importance",
) -> tuple[Selection, LayerMap]:
    """The selection ``mode`` makes from ``importance``, and the layer map it names modules of.

    With ``model``, the ranking must belong to it (same players and, unless
    ``ignore_fingerprint``, the same weights fingerprint). Without one, the layer map is
    rebuilt from the ranking's own player names and nothing can be checked.
    """
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import weights_fingerprint

    if model is None:
        if importance is None:
            raise ConfigError("a module selection needs a model or an importance ranking")
        layer_map, fingerprint = layer_map_from_importance(importance), None
    else:
        layer_map = build_layer_map(model)
        recorded = importance.model.get("fingerprint") if importance is not None else None
        fingerprint = None if ignore_fingerprint else weights_fingerprint(model, like=recorded)
    selection = select_modules(
        layer_map,
        importance,
        mode,
        fraction,
        seed,
        fingerprint=fingerprint,
        min_block=min_block,
        check=model is not None,
        where=where,
    )
    return selection, layer_map


def load_train_heldout(
    data: str,
    tokenizer,
    seq_len: int,
    *,
    limit: int | None = None,
    split_seed: int = 0,
    heldout: str | None = None,
    heldout_fraction: float = 0.1,
    format: str = "auto",
    append_eos: bool = True,
    length_flag: str = "--max-length",
    context_length: int | None = None,
):
    """(train, held-out) SFT data: ``heldout`` as its own file, else ``heldout_fraction`` of ``data``.

    ``split_seed`` drives both the ``limit`` shuffle and the split, apart from the training seed,
    so runs with different training seeds share one held-out set. ``format``: the records' format, forced on
    both files (``load_sft``; default auto: each file's detected). ``length_flag``: the option that
    sets ``seq_len``, as messages name it; ``context_length``: the model's, which caps ``seq_len`` (``load_sft``).
    """
    from layerscope.core.data import load_sft, split_heldout

    shuffle = split_seed if limit else None
    kw = dict(
        max_length=seq_len, format=format, append_eos=append_eos, length_flag=length_flag, context_length=context_length
    )
    train = load_sft(data, tokenizer, limit=limit, shuffle_seed=shuffle, **kw)
    if heldout:
        held = load_sft(heldout, tokenizer, **kw)
        check_held_apart(train, held)
        return train, held
    return split_heldout(train, heldout_fraction, seed=split_seed)


def check_held_apart(train, held) -> None:
    """A held-out set that is the training file, or whose every example is a training example (the same
    records in another file, order or format), is refused: its "held-out" loss would be a training loss.
    One that shares some examples with it is noted on stderr."""
    if train.stats.get("file_sha256") == held.stats.get("file_sha256"):
        raise ConfigError(
            f"--heldout {held.source} holds the same file as --data {train.source}: its loss would be measured "
            "on training data; leave --heldout out to hold out --heldout-fraction of --data"
        )
    seen = {tuple(e.input_ids) for e in train.examples}
    shared = sum(tuple(e.input_ids) in seen for e in held.examples)
    if shared == len(held.examples):
        raise DataError(
            f"--heldout {held.source}: all {shared} of its examples are also training examples (--data "
            f"{train.source}): its loss would be a training loss; leave --heldout out to hold out "
            "--heldout-fraction of --data"
        )
    if shared:
        print(
            f"note: {shared} of {len(held.examples)} held-out examples ({held.source}) are also training examples",
            file=sys.stderr,
        )


def backward_depth_note(selection: Selection, layer_map: LayerMap) -> str | None:
    """A hint when the lowest selected module sits in the bottom quarter of the blocks and no
    ``min_block`` was set: the step time depends on where that module sits, not only on how
    many modules there are."""
    if selection.min_block is not None or selection.mode == "all":
        return None
    lowest = min(selection.modules, key=layer_map.block_of)
    if layer_map.block_of(lowest) >= layer_map.n_blocks // 4:
        return None
    return (
        f"note: {lowest} keeps {layer_map.n_blocks - layer_map.block_of(lowest)} of {layer_map.n_blocks} blocks "
        "in the backward; --min-block B spends the same budget at or above block B and stops the backward there"
    )
