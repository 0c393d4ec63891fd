"""One transformer layer computed only for the active word pieces (halt-and-copy).

Exited pieces keep their frozen hidden state; it still serves as key and value
for the active pieces of its span (each layer projects K/V again with its own
weights). Queries, attention output and the feed-forward block run only for the
active pieces, packed across the whole batch into one [N_active, d] tensor.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PieceLayout:
    """Where the pieces of a [S, T] batch are, as flat indices into S * T.

    real: [M] long, every real (non-padding) piece of the running spans.
    active: [N] long, the pieces computed at this layer (sorted).
    active_span: [N] long, the span (row) of each active piece.
    active_rank: [N] long, its position among its span's active pieces.
    max_active: largest number of active pieces in one span.
    key_mask: [S, 1, 1, T] bool, True where a piece may be attended to.
    all_real_active: every real piece is active and there is no padding.
    """

    real: torch.Tensor
    active: torch.Tensor
    active_span: torch.Tensor
    active_rank: torch.Tensor
    max_active: int
    key_mask: torch.Tensor
    all_real_active: bool

    @classmethod
    def build(cls, real_mask: torch.Tensor, active_mask: torch.Tensor) -> "PieceLayout":
        """real_mask, active_mask: [S, T] bool (active implies real)."""
        n_spans, length = real_mask.shape
        active_flat = active_mask.reshape(-1).nonzero().squeeze(1)
        ranks = (active_mask.cumsum(dim=1) - 1).reshape(-1)
        counts = active_mask.sum(dim=1)
        n_active = int(active_flat.numel())
        return cls(
            real=real_mask.reshape(-1).nonzero().squeeze(1),
            active=active_flat,
            active_span=torch.div(active_flat, length, rounding_mode="floor"),
            active_rank=ranks.index_select(0, active_flat),
            max_active=int(counts.max()) if n_spans else 0,
            key_mask=real_mask[:, None, None, :],
            all_real_active=n_active == n_spans * length,
        )


#: share of real pieces in the [S, T] grid above which K/V are projected densely
DENSE_KV_SHARE = 0.8

_PACKED_MODULES = (
    ("attention", "self", "query"),
    ("attention", "self", "key"),
    ("attention", "self", "value"),
    ("attention", "output", "dense"),
    ("attention", "output", "LayerNorm"),
    ("intermediate", "dense"),
    ("output", "dense"),
    ("output", "LayerNorm"),
)


def is_packable(layer: nn.Module) -> bool:
    """Whether a layer has the BERT layer structure the packed path computes.

    BERT, RoBERTa, XLM-R, ELECTRA and MiniLM layers qualify; relative position
    attention, decoders and cross-attention do not.
    """
    for path in _PACKED_MODULES:
        module = layer
        for name in path:
            module = getattr(module, name, None)
            if module is None:
                return False
    self_attention = layer.attention.self
    position_type = getattr(self_attention, "position_embedding_type", "absolute")
    if position_type not in (None, "absolute"):
        return False
    if getattr(layer, "is_decoder", False) or getattr(layer, "add_cross_attention", False):
        return False
    return hasattr(layer.intermediate, "intermediate_act_fn")


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[S, T, d] -> [S, heads, T, d / heads]"""
    n_spans, length, width = x.shape
    return x.view(n_spans, length, n_heads, width // n_heads).transpose(1, 2)


def packed_layer_forward(
    layer: nn.Module, hidden: torch.Tensor, layout: PieceLayout, inplace: bool = False
) -> torch.Tensor:
    """Apply a BERT-structured layer to the active pieces only.

    hidden: [S, T, d], the current states (exited pieces hold frozen copies).
    inplace: write the new states into `hidden` (inference without autograd
        and without keeping each layer's states).
    Returns [S, T, d]: active pieces updated, every other row unchanged.
    """
    n_spans, length, width = hidden.shape
    attention = layer.attention.self
    n_heads = attention.num_attention_heads
    flat = hidden.reshape(n_spans * length, width)
    # K/V for every real piece, exited ones too (they still serve as keys and
    # values). When padding is a small share of the grid, projecting the whole
    # grid is cheaper than gathering and scattering the real rows.
    if layout.all_real_active or layout.real.numel() >= DENSE_KV_SHARE * n_spans * length:
        keys = attention.key(hidden)
        values = attention.value(hidden)
    else:
        real_states = flat.index_select(0, layout.real)
        keys = _scatter_rows(attention.key(real_states), layout.real, n_spans, length)
        values = _scatter_rows(attention.value(real_states), layout.real, n_spans, length)
    states = flat if layout.all_real_active else flat.index_select(0, layout.active)
    queries = attention.query(states)
    # Scatter packed queries into a per-span grid of the span's active pieces only.
    query_grid = queries.new_zeros(n_spans, layout.max_active, width)
    query_grid[layout.active_span, layout.active_rank] = queries
    dropout = attention.dropout.p if (attention.training and hasattr(attention, "dropout")) else 0.0
    context = F.scaled_dot_product_attention(
        _heads(query_grid, n_heads),
        _heads(keys, n_heads),
        _heads(values, n_heads),
        attn_mask=layout.key_mask,
        dropout_p=dropout,
    )
    context = context.transpose(1, 2).reshape(n_spans, layout.max_active, width)
    context = context[layout.active_span, layout.active_rank]
    attended = layer.attention.output(context, states)
    intermediate = layer.intermediate(attended)
    output = layer.output(intermediate, attended)
    if layout.all_real_active:
        return output.view(n_spans, length, width)
    if inplace:
        return flat.index_copy_(0, layout.active, output).view(n_spans, length, width)
    # index_put is differentiable and much faster than out-of-place index_copy on CPU
    return flat.index_put((layout.active,), output).view(n_spans, length, width)


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor, n_spans: int, length: int) -> torch.Tensor:
    """rows: [M, d] placed at flat positions `index` of a zero [S, T, d] grid."""
    grid = rows.new_zeros(n_spans * length, rows.shape[-1])
    grid.index_put_((index,), rows)
    return grid.view(n_spans, length, rows.shape[-1])


def masked_layer_forward(
    layer: nn.Module, hidden: torch.Tensor, real_mask: torch.Tensor, active_mask: torch.Tensor
) -> torch.Tensor:
    """Fallback for any other layer type: compute every piece, keep frozen copies.

    hidden: [S, T, d]; real_mask, active_mask: [S, T] bool. Correct but saves
    no time. Returns [S, T, d].
    """
    additive = torch.zeros(real_mask.shape, dtype=hidden.dtype, device=hidden.device)
    additive = additive.masked_fill(~real_mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
    updated = layer(hidden, attention_mask=additive)[0]
    return torch.where(active_mask.unsqueeze(-1), updated, hidden)
