"""How many weights AdamW's updates change when the weights themselves are bfloat16 (no float32 copy), against
float32: why `finetune --method full` trains float32 weights (docs/large-models.md).

    python bench/bf16_adamw_updates.py --threads 1

A tiny random Llama (tests/tiny_models.py's shape: 3 blocks, width 64) trained for --steps AdamW steps at --lr on
random tokens, once in each dtype from the same start; printed: the share of weights that differ from the start.
"""

from __future__ import annotations

import argparse
import copy

import torch
import transformers as tf


def changed_share(model: torch.nn.Module, steps: int, lr: float, seed: int) -> float:
    start = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = sum(int((p.detach() != s).sum()) for p, s in zip(model.parameters(), start))
    return changed / sum(s.numel() for s in start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = tf.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    base = tf.LlamaForCausalLM(config).train()
    for dtype in (torch.float32, torch.bfloat16):
        share = changed_share(copy.deepcopy(base).to(dtype), args.steps, args.lr, args.seed)
        print(
            f"{str(dtype).removeprefix('torch.')}: {share:.1%} of weights changed after {args.steps} AdamW steps "
            f"at lr {args.lr:g}"
        )


if __name__ == "__main__":
    main()
