"""Giving the model back as it came when a fine-tuning run ends, whether it finished or failed.

``finetune`` changes the caller's model in place (``requires_grad`` flags, LoRA layers, train mode,
activation checkpointing). A finished run must leave it ready to score; a failed one must leave it
as it was, so that a retry on the same model works instead of tripping over what the first run left.
"""

from __future__ import annotations

from layerscope.training.freezing import TrainingState


class Restore:
    """``model`` as it came, put back on the way out (:class:`~layerscope.training.freezing.TrainingState`).

    Always its train/eval mode, set on the trained model (a ``PeftModel`` has a mode of its own, and
    the Trainer leaves training mode on, which scoring refuses), and activation checkpointing as it
    was (the Trainer switches it on; left on, a later run would be timed with it). Its ``requires_grad``
    flags too where the model itself was trained (full fine-tuning: the frozen rest would otherwise stay
    frozen for whatever the caller does next, another run or a gradient-based ranking); a LoRA run's
    model stays wrapped in its ``PeftModel``, whose frozen base and trainable adapters are peft's own
    state. On failure always the flags, and no LoRA layers, so that a retry finds the plain model, not
    "already carries peft adapters".
    """

    def __init__(self, model):
        self.model = model
        self.trained = None  # the model made trainable: the model itself, or the PeftModel around it
        self.state = TrainingState(model)

    def __enter__(self) -> Restore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._undo()
        elif self.trained is self.model:  # full fine-tuning: the weights trained stay, the freezing goes
            self.state.restore_flags()
        self.state.restore_checkpointing()
        self.state.restore_input_grads()
        self.state.restore_mode(self.trained)

    def _undo(self) -> None:
        if self.trained is not None and self.trained is not self.model:
            self.trained.unload()  # peft takes its layers and peft_config out again
        else:
            _strip_lora(self.model)  # injection failed before handing its PeftModel back
        self.trained = None
        self.state.restore_flags()


def _strip_lora(model) -> None:
    """Put back the layers LoRA wrapped when there is no ``PeftModel`` to ``unload()`` them."""
    if not hasattr(model, "peft_config"):  # check_inputs refused a model that had one: any is ours
        return
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    del model.peft_config
