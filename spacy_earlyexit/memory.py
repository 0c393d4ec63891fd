"""Keep the resident memory of long inference runs flat.

Batches of different shapes leave freed blocks in glibc's heap that the
allocator keeps for reuse: resident memory (RSS) then creeps up over tens of
thousands of docs although nothing leaks (live tensors and heap in use stay
flat; `benchmarks/soak.py` shows both). `EarlyExitTagger.pipe` therefore asks
glibc to return free memory to the system every `RELEASE_EVERY_DOCS` docs
(`malloc_trim(0)`: it frees nothing in use and changes no allocator setting;
it takes a few milliseconds). Elsewhere than glibc this is a no-op.
"""
import ctypes
import ctypes.util
import sys
from typing import Optional

#: docs between two releases in EarlyExitTagger.pipe (0: never)
RELEASE_EVERY_DOCS = 256

_libc: Optional[ctypes.CDLL] = None
_looked_up = False


def _glibc() -> Optional[ctypes.CDLL]:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(libc, "malloc_trim"):
                    libc.malloc_trim.argtypes = [ctypes.c_size_t]
                    libc.malloc_trim.restype = ctypes.c_int
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
