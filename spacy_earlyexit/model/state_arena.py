"""One reusable block of memory for the hidden states of an inference call.

At inference the layer loop keeps each batch's states [S, T, d] alive for the
whole call while the layers allocate and free their temporaries (K/V,
queries, attention, feed-forward blocks) around them. With a fresh
allocation for every batch's states, of a new size in every call (and again
whenever finished rows are dropped), these long-lived blocks end up scattered
through the C heap between the temporaries, and glibc's malloc, which returns
only the top of its heap to the system, keeps growing: resident memory crept
up by tens of percent over long streams although nothing leaked. Keeping the
states of every call in one block that lives across calls takes them out of
the heap's churn: what the layers allocate is freed by the end of each
layer, and the heap returns to the same state after every call.

The block belongs to the calling thread (two threads running the same
encoder never share it), grows to a power of two of elements when a call
needs more, and is given up when the calling thread ends.
"""
import threading
from typing import List, Sequence, Tuple

import torch

#: elements of the smallest block (4 MB of float32)
MIN_ELEMENTS = 1 << 20

#: each batch's region starts at a multiple of this many elements (64 bytes
#: of float32: the alignment torch gives a fresh tensor)
ALIGN_ELEMENTS = 16


def _aligned(n: int) -> int:
    return -(-n // ALIGN_ELEMENTS) * ALIGN_ELEMENTS


def block_elements(needed: int) -> int:
    """Elements of the block that holds `needed` (a power of two, at least
    MIN_ELEMENTS), so that calls of similar size reuse one block."""
    return max(MIN_ELEMENTS, 1 << max(0, needed - 1).bit_length())


class StateArena:
    """Per-thread storage for the hidden states of one call's batches."""

    #: calls whose states hold fewer elements than this (a few sentences:
    #: 256 KB of float32) keep fresh tensors (see wanted)
    min_call_elements = 1 << 16

    def __init__(self) -> None:
        self._local = threading.local()

    def __reduce__(self):
        # copies and pickles start empty: the blocks are per thread and per process
        return (StateArena, ())

    def wanted(self, shapes: Sequence[Tuple[int, ...]]) -> bool:
        """Whether a call with states of these shapes should use the block:
        small states come and go in the heap's small bins without scattering
        it, and a short call (one sentence) is quicker without the copies."""
        return sum(int(torch.Size(shape).numel()) for shape in shapes) >= self.min_call_elements

    def regions(
        self, shapes: Sequence[Tuple[int, ...]], dtype: torch.dtype, device: torch.device
    ) -> List[torch.Tensor]:
        """One flat region per shape, each of prod(shape) elements, carved
        out of this thread's block (grown or replaced when it is too small
        or of another dtype or device). The regions are valid until the next
        call of this method on the same thread."""
        elements = [int(torch.Size(shape).numel()) for shape in shapes]
        sizes = [_aligned(n) for n in elements]
        needed = sum(sizes)
        block = getattr(self._local, "block", None)
        if block is None or block.dtype != dtype or block.device != device or block.numel() < needed:
            self._local.block = None  # free the old block before taking the new one
            # a normal tensor even when made under inference_mode: calls under
            # plain no_grad write into it too
            with torch.inference_mode(False):
                block = torch.empty(block_elements(needed), dtype=dtype, device=device)
            self._local.block = block
        regions, start = [], 0
        for n, size in zip(elements, sizes):
            regions.append(block[start:start + n])
            start += size
        return regions

    def release(self) -> None:
        """Give up this thread's block (the next call allocates again)."""
        self._local.block = None

    def held_bytes(self) -> int:
        """Bytes this thread's block holds (0: none)."""
        block = getattr(self._local, "block", None)
        return 0 if block is None else block.numel() * block.element_size()
