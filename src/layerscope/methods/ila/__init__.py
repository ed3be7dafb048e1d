"""ILA (Shi et al., arXiv 2410.17875): LoRA-align until epsilon-stable, then learn one gate per
LoRA-adapted module under a sparsity budget; the gates rank the modules."""
