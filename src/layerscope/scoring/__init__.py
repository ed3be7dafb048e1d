"""The value function: scoring a model on multiple-choice tasks (lm-eval-compatible log-likelihoods,
batched and packed) or on held-out SFT loss."""
