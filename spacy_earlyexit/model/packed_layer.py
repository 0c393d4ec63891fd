"""One transformer layer computed only for the active word pieces (halt-and-copy).

Exited pieces keep their frozen hidden state; it still serves as key and value
for the active pieces of its span (each layer projects K/V again with its own
weights). Queries, attention output and the feed-forward block run only for the
active pieces, packed across the whole batch into one [N_active, d] tensor.
Several batches can go through a layer together (packed_layers_forward):
their per-row work is then one matrix product, their attention stays apart.
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .batching import consecutive_groups
from .families import BERT_PARTS, LayerParts, bert_masked_call
from .quantization import same_input_products


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


#: a Hugging Face layer whose pieces a LayerParts names; duck-typed, as
#: transformers' layer classes share no base class
HFLayer = Any

#: share of real pieces in the [S, T] grid above which K/V are projected densely
DENSE_KV_SHARE = 0.8


def is_packable(layer: HFLayer, parts: Optional[LayerParts] = None) -> bool:
    """Whether a layer has the pieces the packed path computes (parts: the
    family's, BERT's when None).

    BERT, RoBERTa, XLM-R, ELECTRA and MiniLM layers qualify with BERT's
    parts, DistilBERT's with its own; relative position attention, decoders
    and cross-attention do not.
    """
    return (parts or BERT_PARTS).is_packable(layer)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[S, T, d] -> [S, heads, T, d / heads]"""
    n_spans, length, width = x.shape
    return x.view(n_spans, length, n_heads, width // n_heads).transpose(1, 2)


#: active rows up to which the per-row work (K/V, Q, attention output,
#: feed-forward) of neighbouring batches is done in one matrix product: on
#: CPU, small products run slower per row than large ones, and after exits
#: most batches have only a few hundred active pieces
MERGE_ROWS = 2048


def packed_layer_forward(
    layer: HFLayer,
    hidden: torch.Tensor,
    layout: PieceLayout,
    inplace: bool = False,
    parts: Optional[LayerParts] = None,
) -> torch.Tensor:
    """Apply a layer to the active pieces only (parts: where the layer keeps
    its pieces, BERT's layout when None).

    hidden: [S, T, d], the current states (exited pieces hold frozen copies).
    inplace: write the new states into `hidden` (inference without autograd
        and without keeping each layer's states).
    Returns [S, T, d]: active pieces updated, every other row unchanged.
    """
    return packed_layers_forward(layer, [hidden], [layout], inplace=inplace, parts=parts)[0]


def packed_layers_forward(
    layer: HFLayer,
    hiddens: List[torch.Tensor],
    layouts: List[PieceLayout],
    inplace: bool = False,
    max_rows: Optional[int] = None,
    parts: Optional[LayerParts] = None,
) -> List[torch.Tensor]:
    """packed_layer_forward for several batches at once.

    hiddens: B tensors [S_b, T_b, d]; layouts: their PieceLayouts.
    The per-row work (K/V, Q, attention output, feed-forward) of neighbouring
    batches with at most max_rows active pieces together is done in one
    matrix product each (max_rows: MERGE_ROWS when None; 0 merges nothing);
    attention stays per batch. Each row's result is
    that of packed_layer_forward on its own batch.
    Returns B tensors [S_b, T_b, d].
    """
    results: List[torch.Tensor] = [None] * len(hiddens)  # type: ignore[list-item]
    n_active = [int(layout.active.numel()) for layout in layouts]
    for group in consecutive_groups(n_active, MERGE_ROWS if max_rows is None else max_rows):
        outputs = _packed_group(
            layer, [hiddens[i] for i in group], [layouts[i] for i in group], inplace, parts or BERT_PARTS
        )
        for index, output in zip(group, outputs):
            results[index] = output
    return results


def _cat(parts: List[torch.Tensor]) -> torch.Tensor:
    """parts [N_i, ...] -> [sum N_i, ...] (no copy for a single part)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


#: row counts above this are rounded up to ROW_BUCKET_BITS significant bits
#: before the per-row work (see bucket_rows); at or below it they are exact
EXACT_ROWS = 64
#: significant bits kept when rounding a row count up (6: less than 1/32 of
#: the rows are padding, 32 sizes per doubling; 0: no rounding)
ROW_BUCKET_BITS = 6
#: bfloat16 rows: exact up to BFLOAT16_EXACT_ROWS, then BFLOAT16_ROW_BUCKET_BITS
#: significant bits (4 sizes per doubling, less than 1/4 padding) up to
#: BFLOAT16_COARSE_ROWS, then as float32's. On CPU each bfloat16 product
#: shape gets a oneDNN primitive of its own (MiniLM's feed-forward product:
#: ~0.7 MB resident per row count), and a service's small calls run many
#: row counts below a thousand: with float32's sizes a bfloat16 service grew
#: by hundreds of MB. Large counts (big batches) keep the fine sizes, where
#: padding would cost the most.
BFLOAT16_EXACT_ROWS = 16
BFLOAT16_ROW_BUCKET_BITS = 3
BFLOAT16_COARSE_ROWS = 1024


def bucket_rows(n_rows: int, dtype: Optional[torch.dtype] = None) -> int:
    """n_rows rounded up to one of a few sizes (ROW_BUCKET_BITS significant
    bits above EXACT_ROWS; bfloat16 rows up to BFLOAT16_COARSE_ROWS: see
    BFLOAT16_EXACT_ROWS).

    The per-row work after exits has a new row count at every layer of every
    batch. Rounded up, the products, the activation and the norm see a small
    set of shapes: oneDNN (behind torch's GELU on CPU, and its bfloat16
    matrix products) keeps a compiled primitive per shape in a cache that
    otherwise fills with one entry per row count and churns, and glibc's
    malloc reuses freed blocks of the same size instead of scattering
    blocks of ever new sizes through its heap (resident memory crept up over
    long streams from both)."""
    if dtype == torch.bfloat16 and n_rows <= BFLOAT16_COARSE_ROWS:
        exact, bits = BFLOAT16_EXACT_ROWS, BFLOAT16_ROW_BUCKET_BITS
    else:
        exact, bits = EXACT_ROWS, ROW_BUCKET_BITS
    if not bits or n_rows <= exact:
        return n_rows
    step = 1 << max(0, n_rows.bit_length() - bits)
    return -(-n_rows // step) * step


def _gather_padded(
    sources: List[torch.Tensor], indices: Sequence[Optional[torch.Tensor]]
) -> Tuple[torch.Tensor, List[int]]:
    """The rows `indices[i]` of each source [R_i, d] (None: all its rows),
    concatenated, with padding rows up to bucket_rows of their total.

    The padding repeats row 0 of the last source whose rows are gathered (its
    index is extended, so the gather that is done anyway makes them), or is
    zeros concatenated on; either way its results are dropped (_split).
    Returns ([bucket_rows(total), d], the row count of each source)."""
    counts = [int(index.numel()) if index is not None else int(src.shape[0]) for src, index in zip(sources, indices)]
    padding = bucket_rows(sum(counts), sources[0].dtype) - sum(counts)
    last = indices[-1]
    if padding and last is not None:
        indices = [*indices[:-1], torch.cat([last, last.new_zeros(padding)])]
        padding = 0
    parts = [src if index is None else src.index_select(0, index) for src, index in zip(sources, indices)]
    if padding:
        parts.append(parts[0].new_zeros(padding, *parts[0].shape[1:]))
    return _cat(parts), counts


def _split(whole: torch.Tensor, counts: List[int]) -> List[torch.Tensor]:
    """Views of `whole` with these row counts (the inverse of
    _gather_padded: the padding rows after them are left out)."""
    if len(counts) == 1:
        return [whole if whole.shape[0] == counts[0] else whole[: counts[0]]]
    return list(whole[: sum(counts)].split(counts))


def _packed_group(
    layer: HFLayer, hiddens: List[torch.Tensor], layouts: List[PieceLayout], inplace: bool, parts: LayerParts
) -> List[torch.Tensor]:
    """packed_layers_forward for one merge group: per-row work on the rows of
    all its batches concatenated, attention per batch."""
    project_query, project_key, project_value = parts.projections(layer)
    n_heads = parts.n_heads(layer)
    width = hiddens[0].shape[-1]
    flats = [hidden.reshape(-1, width) for hidden in hiddens]
    # K/V for every real piece, exited ones too (they still serve as keys and
    # values). When padding is a small share of the grid, projecting the whole
    # grid is cheaper than gathering and scattering the real rows.
    dense = [
        layout.all_real_active or layout.real.numel() >= DENSE_KV_SHARE * flat.shape[0]
        for flat, layout in zip(flats, layouts)
    ]
    # the per-row work runs on row counts rounded up to a few sizes
    # (bucket_rows); the padding rows' results are dropped
    kv_all, kv_counts = _gather_padded(
        flats, [None if is_dense else layout.real for layout, is_dense in zip(layouts, dense)]
    )
    keys_all, values_all = same_input_products((project_key, project_value), kv_all)
    key_rows, value_rows = _split(keys_all, kv_counts), _split(values_all, kv_counts)
    states_all, counts = _gather_padded(
        flats, [None if layout.all_real_active else layout.active for layout in layouts]
    )
    queries = _split(project_query(states_all), counts)
    dropout = parts.attention_dropout(layer)
    # with padding, each batch's contexts are gathered as flat rows so that
    # the padding rides on the gather (_gather_padded); without, directly
    padded = states_all.shape[0] != sum(counts)
    contexts: List[torch.Tensor] = []
    context_index: List[Optional[torch.Tensor]] = []
    for index, (hidden, layout) in enumerate(zip(hiddens, layouts)):
        n_spans, length, _ = hidden.shape
        if dense[index]:
            keys = key_rows[index].view(n_spans, length, width)
            values = value_rows[index].view(n_spans, length, width)
        else:
            keys = _scatter_rows(key_rows[index], layout.real, n_spans, length)
            values = _scatter_rows(value_rows[index], layout.real, n_spans, length)
        # one span without padding: its active pieces' queries are the grid
        # as they are, every key may be attended to, the contexts are the rows
        one_span = n_spans == 1 and int(layout.real.numel()) == length
        if one_span:
            query_grid = queries[index].reshape(1, -1, width)
        else:  # packed queries into a per-span grid of the span's active pieces only
            query_grid = queries[index].new_zeros(n_spans, layout.max_active, width)
            query_grid[layout.active_span, layout.active_rank] = queries[index]
        context = F.scaled_dot_product_attention(
            _heads(query_grid, n_heads),
            _heads(keys, n_heads),
            _heads(values, n_heads),
            attn_mask=None if one_span else layout.key_mask,
            dropout_p=dropout,
        )
        context = context.transpose(1, 2).reshape(n_spans, layout.max_active, width)
        if padded:  # [S * max_active, d] and the flat row (span, rank) of each active piece
            contexts.append(context.view(n_spans * layout.max_active, width))
            context_index.append(layout.active_span * layout.max_active + layout.active_rank)
        else:
            contexts.append(context.view(-1, width) if one_span else context[layout.active_span, layout.active_rank])
            context_index.append(None)
    attended = parts.attention_output(layer, _gather_padded(contexts, context_index)[0], states_all)
    outputs = _split(feed_forward(layer, attended, parts), counts)
    results = []
    for hidden, flat, layout, output in zip(hiddens, flats, layouts, outputs):
        n_spans, length, _ = hidden.shape
        if layout.all_real_active:
            results.append(output.view(n_spans, length, width))
        elif inplace:
            results.append(flat.index_copy_(0, layout.active, output).view(n_spans, length, width))
        else:
            # index_put is differentiable and much faster than out-of-place index_copy on CPU
            results.append(flat.index_put((layout.active,), output).view(n_spans, length, width))
    return results


#: floats of the feed-forward block's [rows, d_ff] intermediate computed at
#: once (2,048 rows of MiniLM's 1,536, 1,024 of BERT-base's 3,072: 12 MB).
#: A full batch's intermediate in one piece (up to 8,192 rows, 50 MB) is
#: larger than the blocks glibc's malloc keeps in its heap (32 MB at most),
#: so it was mapped afresh, page by page, at every layer
FFN_BLOCK_FLOATS = 2048 * 1536


def feed_forward(layer: HFLayer, attended: torch.Tensor, parts: Optional[LayerParts] = None) -> torch.Tensor:
    """A layer's feed-forward block (with its residual and norm; BERT's:
    intermediate, output, residual and LayerNorm) on [N, d] rows, in blocks
    of rows (see FFN_BLOCK_FLOATS). Rows are independent, so the result is
    that of one call. Returns [N, d]."""
    parts = parts or BERT_PARTS
    n_rows = attended.shape[0]
    dense = parts.intermediate_linear(layer)
    # an int8 layer names its own block size (quantization.Int8Linear)
    block = getattr(dense, "ffn_block_rows", None) or max(1, FFN_BLOCK_FLOATS // int(dense.out_features))
    if n_rows <= block:
        return parts.feed_forward(layer, attended)
    return torch.cat([parts.feed_forward(layer, rows) for rows in attended.split(block)])


def _scatter_rows(rows: torch.Tensor, index: torch.Tensor, n_spans: int, length: int) -> torch.Tensor:
    """rows: [M, d] placed at flat positions `index` of a zero [S, T, d] grid."""
    grid = rows.new_zeros(n_spans * length, rows.shape[-1])
    grid.index_put_((index,), rows)
    return grid.view(n_spans, length, rows.shape[-1])


def masked_layer_forward(
    layer: HFLayer,
    hidden: torch.Tensor,
    real_mask: torch.Tensor,
    active_mask: torch.Tensor,
    call: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Fallback for any other layer type: compute every piece, keep frozen copies.

    hidden: [S, T, d]; real_mask, active_mask: [S, T] bool. call(hidden,
    real_mask) runs the whole layer with padding masked (the family's
    calling convention; BERT's when None). Correct but saves no time.
    Returns [S, T, d].
    """
    if call is None:
        updated = bert_masked_call(None, 0, layer, hidden, real_mask)
    else:
        updated = call(hidden, real_mask)
    return torch.where(active_mask.unsqueeze(-1), updated, hidden)
