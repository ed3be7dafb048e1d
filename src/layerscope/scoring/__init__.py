"""The value function: scoring a model on multiple-choice tasks or on held-out SFT loss.

Scores are exactly lm-evaluation-harness's ``loglikelihood`` (HF backend), computed fast
enough to run thousands of times inside ablation and Shapley loops: everything is tokenized
once, batched with little padding, contexts are packed with all their choices, and only the
scored positions reach the LM head.

- ``batching``: :class:`Batch` (one forward's inputs), :class:`EvalResult`, packed rows and
  the padding-minimising batch partition;
- ``encoding``: context / continuation token ids as lm-eval makes them;
- ``runner``: the forward loop (default forward, LM-head selector, sums across processes);
- ``multiple_choice``: :class:`MCEvaluator`, :func:`mc_evaluator` (packed, else plain rows),
  :func:`evaluate_task`;
- ``loss``: :class:`LossEvaluator`;
- ``vocabulary``: token ids checked against the model they go into (once per evaluator and model);
- ``sources``: :func:`evaluator_for` (an evaluator from a ``--task`` spec), :func:`evaluator_info`.

**The evaluator contract** (what the coalition engine and the methods rely on): an evaluator
has ``batches: list[Batch]``, fixed at construction, and
``evaluate(model, forward=None, progress=False) -> EvalResult``. ``forward(batch_index, batch)
-> logits`` replaces the model's own forward (the engine supplies one that removes players and
reuses cached hidden states); it must take ``batch.input_ids / attention_mask / position_ids``
as the model inputs and may return logits for all positions or only the last
``batch.logits_to_keep``. ``EvalResult.value`` is higher-is-better.
"""

from layerscope.core.data import IGNORE_INDEX
from layerscope.scoring.batching import FORWARD_OVERHEAD_TOKENS, Batch, EvalResult, partition_sorted
from layerscope.scoring.encoding import encode_like_lm_eval
from layerscope.scoring.loss import LossEvaluator
from layerscope.scoring.multiple_choice import (
    LAYOUTS,
    PACKING_TOLERANCE,
    MCEvaluator,
    evaluate_task,
    mc_evaluator,
    packing_tolerance,
)
from layerscope.scoring.runner import ForwardFn, default_forward
from layerscope.scoring.sources import evaluator_for, evaluator_info

__all__ = [
    "FORWARD_OVERHEAD_TOKENS",
    "IGNORE_INDEX",
    "LAYOUTS",
    "PACKING_TOLERANCE",
    "packing_tolerance",
    "Batch",
    "EvalResult",
    "ForwardFn",
    "LossEvaluator",
    "MCEvaluator",
    "default_forward",
    "encode_like_lm_eval",
    "evaluate_task",
    "evaluator_for",
    "evaluator_info",
    "mc_evaluator",
    "partition_sorted",
]
