"""Keep the resident memory of long inference runs flat.

Batches of different shapes leave freed blocks in glibc's heap: with glibc's
default (a dynamic mmap threshold that rises to 32 MB), tensors of a few MB
are carved out of the heap, the heap fragments and grows, and resident memory
(RSS) creeps up over tens of thousands of docs although nothing leaks (live
tensors and heap in use stay flat; `benchmarks/soak.py` shows both: +59% over
50,000 docs). Two measures, applied by `EarlyExitTagger.pipe`:

- `limit_heap_blocks()`, once per process, if MMAP_THRESHOLD is set (opt-in):
  allocations of that many bytes or more get their own mapping, returned to
  the system when freed (glibc's M_MMAP_THRESHOLD, process-wide). Measured:
  256 KB keeps RSS flat (+1% over 20,000 docs) at about 35% fewer words/s;
- `release_free_memory()` every RELEASE_EVERY_DOCS docs: `malloc_trim(0)`
  gives back free pages (it frees nothing in use).

Elsewhere than glibc both are no-ops.
"""
import ctypes
import ctypes.util
import sys
from typing import Optional

#: docs between two releases in EarlyExitTagger.pipe (0: never)
RELEASE_EVERY_DOCS = 256
#: allocations of at least this many bytes are mapped on their own (0: glibc's
#: default). Off by default: 256 KB keeps RSS flat but made nlp.pipe about 35%
#: slower here (every large tensor then costs fresh page faults)
MMAP_THRESHOLD = 0
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_threshold_set = False

_libc: Optional[ctypes.CDLL] = None
_looked_up = False


def _glibc() -> Optional[ctypes.CDLL]:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
                    libc.malloc_trim.argtypes = [ctypes.c_size_t]
                    libc.malloc_trim.restype = ctypes.c_int
                    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    libc.mallopt.restype = ctypes.c_int
                    _libc = libc
            except OSError:
                _libc = None
    return _libc


def release_free_memory() -> bool:
    """Return the heap's free memory to the system; False where unsupported."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def limit_heap_blocks() -> bool:
    """Set glibc's mmap threshold to MMAP_THRESHOLD, once per process.

    Returns whether it is set (False: turned off, or not glibc).
    """
    global _threshold_set
    if _threshold_set:
        return True
    libc = _glibc()
    if libc is None or not MMAP_THRESHOLD:
        return False
    _threshold_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(MMAP_THRESHOLD)))
    return _threshold_set
