"""Group sequences into padded batches with little padding.

A batch of S sequences padded to the longest, L, costs S * L piece slots in
the embedding, the attention and the dense K/V projection, however many of
them are real; each batch also has a fixed cost (the per-layer bookkeeping
and small-op overheads of the layer loop). Cutting a length-sorted list into
equal-sized batches is cheap to compute but pads short sequences up to the
long tail; cutting it at every change of length pays the fixed cost too
often. `length_batches` chooses the cut points that minimise the total of
both, exactly, by dynamic programming over the sorted lengths.
"""
from typing import List, Sequence, Union

import numpy

#: fixed cost of one batch, in padded piece slots: the padding one more
#: batch must save to be worth starting
BATCH_COST_SLOTS = 512


def length_batches(
    lengths: Union[Sequence[int], numpy.ndarray],
    max_batch: int,
    max_slots: int,
    batch_cost: float = BATCH_COST_SLOTS,
) -> List[List[int]]:
    """Indices of `lengths`, grouped into batches of similar length.

    lengths: [N] sequence lengths (> 0).
    max_batch: most sequences in one batch.
    max_slots: most padded slots (sequences x longest length) in one batch; a
        single sequence longer than this still gets a batch of its own.
    batch_cost: fixed cost of a batch, in slots.
    Returns batches of indices into `lengths`, each sorted by length, the
    batches in order of length; together they hold every index once.
    Minimises sum over batches of (batch_cost + size * longest length).
    """
    if max_batch < 1 or max_slots < 1:
        raise ValueError(f"max_batch and max_slots must be >= 1; got {max_batch}, {max_slots}")
    order = numpy.argsort(numpy.asarray(lengths, dtype="int64"), kind="stable")
    sorted_lengths = numpy.asarray(lengths, dtype="float64")[order]
    n = len(order)
    # best[i]: least cost of batching the i shortest; cut[i]: start of the last batch
    best = numpy.zeros(n + 1)
    cut = numpy.zeros(n + 1, dtype="int64")
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        most = max(1, min(max_batch, int(max_slots // longest)))
        starts = numpy.arange(max(0, end - most), end)
        costs = best[starts] + batch_cost + (end - starts) * longest
        pick = int(costs.argmin())
        best[end] = costs[pick]
        cut[end] = starts[pick]
    batches: List[List[int]] = []
    end = n
    while end > 0:
        batches.append(order[cut[end]:end].tolist())
        end = int(cut[end])
    return batches[::-1]


def consecutive_groups(sizes: Sequence[int], budget: int) -> List[List[int]]:
    """Indices 0..N-1 cut into consecutive groups whose sizes sum to at most
    `budget` (an index larger than the budget is a group of its own; a
    budget of 0 gives one group per index of size > 0).

    sizes: [N] non-negative sizes. Returns the groups in order.
    """
    groups: List[List[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not groups or total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups
