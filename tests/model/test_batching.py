"""length_batches against an exhaustive search over all ways to cut the
length-sorted list, and its invariants on random input; the lender index
(which token a token without an output copies) against a by-hand rule."""
import itertools
import random
from typing import List, Sequence

import numpy

import pytest
from spacy_earlyexit.model.batching import consecutive_groups, length_batches


def cost(batches: List[List[int]], lengths: Sequence[int], batch_cost: float) -> float:
    return sum(batch_cost + len(b) * max(lengths[i] for i in b) for b in batches)


def brute_force_cost(lengths: Sequence[int], max_batch: int, max_slots: int, batch_cost: float) -> float:
    """Least cost over every cut of the sorted list into contiguous batches."""
    ordered = sorted(lengths)
    n = len(ordered)
    best = float("inf")
    for n_cuts in range(n):
        for cuts in itertools.combinations(range(1, n), n_cuts):
            bounds = (0,) + cuts + (n,)
            parts = [ordered[a:b] for a, b in zip(bounds, bounds[1:])]
            if any(len(p) > max_batch or (len(p) > 1 and len(p) * p[-1] > max_slots) for p in parts):
                continue
            best = min(best, sum(batch_cost + len(p) * p[-1] for p in parts))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_optimal_against_exhaustive_search(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(2, 12), rng.randint(20, 90)]) for _ in range(rng.randint(1, 9))]
    max_batch = rng.randint(1, 6)
    max_slots = rng.choice([10_000, 150, 60])
    batch_cost = rng.choice([0.0, 8.0, 64.0])
    batches = length_batches(lengths, max_batch, max_slots, batch_cost)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= max_batch
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= max_slots
    assert cost(batches, lengths, batch_cost) == pytest.approx(
        brute_force_cost(lengths, max_batch, max_slots, batch_cost)
    )


def test_equal_lengths_fill_batches() -> None:
    batches = length_batches([10] * 10, max_batch=4, max_slots=10_000)
    assert len(batches) == 3  # the fewest batches of at most 4: no padding to avoid


def test_short_and_long_are_not_padded_together() -> None:
    lengths = [5] * 32 + [100] * 32
    batches = length_batches(lengths, max_batch=64, max_slots=100_000, batch_cost=64)
    assert len(batches) == 2
    assert {lengths[i] for i in batches[0]} == {5}


def test_over_long_sequence_gets_its_own_batch() -> None:
    batches = length_batches([600, 3, 4], max_batch=64, max_slots=512)
    assert [0] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2]


def test_empty_and_invalid() -> None:
    assert length_batches([], 8, 100) == []
    with pytest.raises(ValueError, match="max_batch"):
        length_batches([3], 0, 100)


def reference_lender(has_value: List[bool]) -> List[int]:
    """By hand: itself, else the nearest token before it with a value, else the nearest after, else -1."""
    out = []
    for i, has in enumerate(has_value):
        if has:
            out.append(i)
            continue
        before = [j for j in range(i - 1, -1, -1) if has_value[j]]
        after = [j for j in range(i + 1, len(has_value)) if has_value[j]]
        out.append(before[0] if before else after[0] if after else -1)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_lender_index_per_doc_and_segmented(seed: int) -> None:
    import numpy
    from spacy_earlyexit.layers.token_mapping import lender_index, lender_index_segments

    rng = random.Random(seed)
    docs = [[rng.random() < rng.choice([0.0, 0.3, 0.9]) for _ in range(rng.randint(0, 7))]
            for _ in range(rng.randint(0, 6))]
    for doc in docs:
        assert lender_index(numpy.asarray(doc, dtype=bool)).tolist() == reference_lender(doc)
    flat = numpy.asarray([has for doc in docs for has in doc], dtype=bool)
    segmented = lender_index_segments(flat, numpy.asarray([len(d) for d in docs], dtype="int64"))
    # never lends across docs: the same as each doc on its own
    assert segmented.tolist() == [i for doc in docs for i in reference_lender(doc)]


def test_waves_hold_every_batch_once_in_order_within_the_slot_budget(monkeypatch) -> None:
    from types import SimpleNamespace

    from spacy_earlyexit.layers import early_exit_transformer

    monkeypatch.setattr(early_exit_transformer, "WAVE_SLOTS", 600)
    rng = numpy.random.default_rng(1)
    lengths = rng.integers(3, 90, size=300)
    pieces = SimpleNamespace(span_lengths=lengths)
    chunks = early_exit_transformer._chunks(pieces, 16, 16 * 40)
    waves = early_exit_transformer._waves(pieces, 16, 16 * 40)
    assert [chunk for wave in waves for chunk in wave] == chunks
    assert len(waves) > 1
    for wave in waves:
        slots = [len(chunk) * int(lengths[chunk].max()) for chunk in wave]
        assert len(wave) == 1 or sum(slots) <= 600
    monkeypatch.setattr(early_exit_transformer, "WAVE_SLOTS", 0)  # one batch a wave
    assert early_exit_transformer._waves(pieces, 16, 16 * 40) == [[chunk] for chunk in chunks]


def test_consecutive_groups_keep_order_and_budget() -> None:
    assert consecutive_groups([], 10) == []
    assert consecutive_groups([3, 3, 3, 3], 10) == [[0, 1, 2], [3]]
    assert consecutive_groups([12, 1, 1, 20, 0, 0], 10) == [[0], [1, 2], [3], [4, 5]]
    assert consecutive_groups([5, 5], 0) == [[0], [1]]  # 0 merges nothing
    rng = numpy.random.default_rng(0)
    for _ in range(20):
        rows = rng.integers(0, 50, size=int(rng.integers(1, 12))).tolist()
        groups = consecutive_groups(rows, 60)
        assert [i for group in groups for i in group] == list(range(len(rows)))
        for group in groups:
            assert len(group) == 1 or sum(rows[i] for i in group) <= 60
