"""Attention on packed shapes in float32 and bfloat16, one thread: torch's
scaled_dot_product_attention (what the packed layer calls) against a plain
bmm + softmax + bmm, with a per-span key mask.

    python benchmarks/precision/attention_speed.py

Shapes: (spans, heads 12, active pieces, keys, head size 32), as MiniLM's
packed layer sees them after exits. Prints ms per call (median of 30).
"""
import math

import torch
from torch.nn import functional as F

from product_speed import median_ms  # this folder's

SHAPES = [(64, 32, 32), (64, 6, 32), (256, 4, 24), (1, 25, 25)]


def plain_attention(q, k, v, mask):
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.matmul(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1), v)


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print("| spans | active | keys | float32 SDPA ms | bfloat16 SDPA ms | bfloat16 bmm ms |")
    print("|---|---|---|---|---|---|")
    for spans, active, keys in SHAPES:
        q = torch.randn(spans, 12, active, 32, generator=generator)
        k = torch.randn(spans, 12, keys, 32, generator=generator)
        v = torch.randn(spans, 12, keys, 32, generator=generator)
        mask = torch.rand(spans, 1, 1, keys, generator=generator) > 0.2
        mask[..., 0] = True
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        with torch.inference_mode():
            f32 = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeats=30)
            b16 = median_ms(lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask), repeats=30)
            bmm = median_ms(lambda: plain_attention(qb, kb, vb, mask), repeats=30)
        print(f"| {spans} | {active} | {keys} | {f32:.3f} | {b16:.3f} | {bmm:.3f} |")


if __name__ == "__main__":
    main()
