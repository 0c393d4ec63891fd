"""The state arena: one reusable block per thread for the hidden states of
inference calls. Checked on its own (sizes, reuse, alignment, threads,
copies) and in the encoder against a reference that allocates fresh states
(a forward pass with autograd on takes no storage)."""
import copy
import pickle
import threading
from typing import List

import pytest
import torch

from spacy_earlyexit.model import ExitSettings
from spacy_earlyexit.model.batch import EncoderOutput
from spacy_earlyexit.model.state_arena import ALIGN_ELEMENTS, MIN_ELEMENTS, StateArena, block_elements

from helpers.encoders import build_batch, make_encoder, random_bert, random_spans


def test_block_sizes_are_powers_of_two_from_the_minimum() -> None:
    assert block_elements(0) == MIN_ELEMENTS
    assert block_elements(MIN_ELEMENTS) == MIN_ELEMENTS
    assert block_elements(MIN_ELEMENTS + 1) == 2 * MIN_ELEMENTS
    assert block_elements(3 * MIN_ELEMENTS) == 4 * MIN_ELEMENTS


def test_regions_have_the_shapes_elements_and_aligned_starts() -> None:
    arena = StateArena()
    shapes = [(3, 5, 7), (1, 1, 1), (2, 9, 4)]
    regions = arena.regions(shapes, torch.float32, torch.device("cpu"))
    base = regions[0].data_ptr()
    for region, shape in zip(regions, shapes):
        assert region.dim() == 1 and region.numel() == torch.Size(shape).numel()
        assert (region.data_ptr() - base) % (ALIGN_ELEMENTS * 4) == 0
    ends = [(r.data_ptr() - base) // 4 + r.numel() for r in regions]
    starts = [(r.data_ptr() - base) // 4 for r in regions]
    assert all(end <= start for end, start in zip(ends, starts[1:]))  # no overlap


def test_block_is_reused_grown_and_replaced_by_dtype() -> None:
    arena = StateArena()
    cpu = torch.device("cpu")
    first = arena.regions([(4, 8, 16)], torch.float32, cpu)[0].data_ptr()
    assert arena.regions([(2, 8, 16)], torch.float32, cpu)[0].data_ptr() == first
    assert arena.held_bytes() == MIN_ELEMENTS * 4
    arena.regions([(MIN_ELEMENTS + 5,)], torch.float32, cpu)
    assert arena.held_bytes() == 2 * MIN_ELEMENTS * 4
    assert arena.regions([(4, 8, 16)], torch.bfloat16, cpu)[0].dtype == torch.bfloat16
    assert arena.held_bytes() == MIN_ELEMENTS * 2
    arena.release()
    assert arena.held_bytes() == 0


def test_each_thread_has_its_own_block() -> None:
    arena = StateArena()
    mine = arena.regions([(10,)], torch.float32, torch.device("cpu"))[0].data_ptr()
    theirs: List[int] = []
    thread = threading.Thread(
        target=lambda: theirs.append(arena.regions([(10,)], torch.float32, torch.device("cpu"))[0].data_ptr())
    )
    thread.start()
    thread.join()
    assert theirs and theirs[0] != mine


def test_copies_and_pickles_start_empty() -> None:
    arena = StateArena()
    arena.regions([(10,)], torch.float32, torch.device("cpu"))
    assert copy.deepcopy(arena).held_bytes() == 0
    assert pickle.loads(pickle.dumps(arena)).held_bytes() == 0
    encoder = make_encoder(random_bert())
    encoder.state_arena.min_call_elements = 0
    with torch.inference_mode():
        encoder(build_batch(random_spans(0, n_spans=3)), ExitSettings())
    assert encoder.state_arena.held_bytes() > 0
    assert copy.deepcopy(encoder).state_arena.held_bytes() == 0


def _same(a: EncoderOutput, b: EncoderOutput) -> None:
    assert torch.equal(a.exit_layer, b.exit_layer)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.exit_logits.detach(), b.exit_logits.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("settings", [
    ExitSettings(),
    ExitSettings(exit_mode="token", threshold=0.5, window=1),
    ExitSettings(exit_mode="token", threshold=0.6, window=0),
    ExitSettings(exit_mode="sentence", threshold=0.5),
    ExitSettings(exit_mode="token", threshold=0.5, max_layer=2),
])
def test_inference_with_the_arena_matches_fresh_states(settings: ExitSettings) -> None:
    """Calls of growing and shrinking size, several batches per call (rows
    dropping at different layers): every output equals the reference pass
    with autograd on, which keeps fresh tensors for its states, and the
    block is allocated once."""
    encoder = make_encoder(random_bert())
    encoder.state_arena.min_call_elements = 0  # the tiny batches use the block too
    calls = [
        [build_batch(random_spans(seed, n_spans=n), seed=seed) for seed, n in ((1, 6), (2, 2))],
        [build_batch(random_spans(3, n_spans=1), seed=3)],
        [build_batch(random_spans(seed, n_spans=n), seed=seed) for seed, n in ((4, 9), (5, 4), (6, 7))],
    ]
    held = None
    for batches in calls:
        with torch.inference_mode():
            fast = encoder.forward_batches(batches, settings)
        held = held or encoder.state_arena.held_bytes()
        assert encoder.state_arena.held_bytes() == held
        with torch.enable_grad():
            reference = encoder.forward_batches(batches, settings)
        for a, b in zip(fast, reference):
            _same(a, b)


def test_small_calls_keep_fresh_states() -> None:
    """A call below min_call_elements takes no block; one above does."""
    encoder = make_encoder(random_bert())
    batch = build_batch(random_spans(0, n_spans=3))
    elements = batch.n_spans * batch.input_ids.shape[1] * encoder.hidden_size
    encoder.state_arena.min_call_elements = elements + 1
    with torch.inference_mode():
        encoder(batch, ExitSettings())
    assert encoder.state_arena.held_bytes() == 0
    encoder.state_arena.min_call_elements = elements
    with torch.inference_mode():
        encoder(batch, ExitSettings())
    assert encoder.state_arena.held_bytes() > 0


def test_threads_running_one_encoder_get_their_own_results() -> None:
    encoder = make_encoder(random_bert())
    encoder.state_arena.min_call_elements = 0
    settings = ExitSettings(exit_mode="token", threshold=0.5, window=1)
    batches = [build_batch(random_spans(seed, n_spans=3 + seed), seed=seed) for seed in range(4)]
    with torch.inference_mode():
        expected = [encoder(batch, settings) for batch in batches]
    results: dict = {}

    def work(index: int) -> None:
        with torch.inference_mode():
            results[index] = [encoder(batches[index], settings) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, outputs in results.items():
        for output in outputs:
            _same(output, expected[index])
