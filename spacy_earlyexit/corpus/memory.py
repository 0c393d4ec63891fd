"""Keep the resident memory of long inference runs flat.

Batches of different shapes leave freed blocks in glibc's heap: with glibc's
default (a dynamic mmap threshold that rises to 32 MB), tensors of a few MB
are carved out of the heap, the heap fragments and grows, and resident memory
(RSS) creeps up over tens of thousands of docs although nothing leaks (live
tensors and heap in use stay flat; `benchmarks/soak.py` shows both: +31% over
50,000 docs in batches of 1,024). Two measures, applied by `EarlyExitTagger.pipe`:

- `limit_heap_blocks()`, once per process, if MMAP_THRESHOLD is set (opt-in):
  allocations of that many bytes or more get their own mapping, returned to
  the system when freed (glibc's M_MMAP_THRESHOLD, process-wide). Measured:
  256 KB keeps RSS flat (+1% over 20,000 docs) at about 35% fewer words/s;
- `release_free_memory()` every RELEASE_EVERY_DOCS docs (`count_docs`):
  `malloc_trim(0)` gives back free pages (it frees nothing in use); every
  page the next batches touch again then costs a page fault, so this is rare.

Elsewhere than glibc both are no-ops.

On glibc, only the costly 256 KB threshold keeps RSS flat
(`benchmarks/soak.py`, token mode, batches of 1,024 docs, 20,000 docs: +15%
with the release alone; a 1 MB threshold +6% at 12% fewer words/s). jemalloc
does, at 1-2% fewer words/s and with less RSS to begin with
(+1.8% over 20,000 docs, 570 against 693 MB after 5,000; +3.4% over 50,000
docs): preload it for long runs
(`LD_PRELOAD=$(python -m spacy_earlyexit jemalloc-path)`).
`python -m spacy_earlyexit annotate` does so itself when jemalloc is
installed (`find_jemalloc`, `preload_jemalloc`), unless told
`--allocator system`.
"""
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

#: docs annotated by EarlyExitTagger.pipe, over all calls in the process,
#: between two releases (0: never). A release costs the next batch a page
#: fault for every page it touches again. After every batch of 1,024 EWT
#: docs (as before) that was about 105 MB handed back and faulted in again
#: per batch (strace, token mode), sys time 13 against 8 us/word in one pair
#: of runs; with rare releases a steady stream of one setting page-faults
#: almost never (perf). The memory a burst of docs leaves free goes back to
#: the system within RELEASE_EVERY_DOCS docs
RELEASE_EVERY_DOCS = 16384
_docs_since_release = 0
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


def count_docs(n_docs: int) -> bool:
    """Note that n_docs more docs were annotated; release free memory once
    RELEASE_EVERY_DOCS docs have been annotated since the last release
    (counted over all nlp.pipe calls, so that a service calling it once per
    request releases too). Returns whether it released."""
    global _docs_since_release
    _docs_since_release += n_docs
    if not RELEASE_EVERY_DOCS or _docs_since_release < RELEASE_EVERY_DOCS:
        return False
    _docs_since_release = 0
    release_free_memory()
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


#: where distributions install jemalloc's shared library (Debian/Ubuntu
#: libjemalloc2, Fedora/RHEL jemalloc, Alpine, Homebrew on Linux)
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/home/linuxbrew/.linuxbrew/lib/libjemalloc.so.2",
)
#: set in the environment of a process started again with jemalloc preloaded
REEXEC_MARKER = "SPACY_EARLYEXIT_PRELOADED"


def allocator() -> str:
    """The malloc this process runs on: "jemalloc" (preloaded), "glibc" or
    "other" (macOS, Windows, musl, an allocator this does not recognise)."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        try:
            if "libjemalloc" in maps.read_text(errors="replace"):
                return "jemalloc"
        except OSError:
            pass
    return "glibc" if _glibc() is not None else "other"


def find_jemalloc(candidates: Optional[Sequence[str]] = None) -> Optional[str]:
    """Path of an installed jemalloc shared library (first of `candidates`,
    default JEMALLOC_PATHS), or None (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    for path in JEMALLOC_PATHS if candidates is None else candidates:
        if os.path.isfile(path):
            return path
    return None


def preload_jemalloc(argv: List[str], library: Optional[str] = None) -> None:
    """Start this process again with jemalloc preloaded (os.execve: does not
    return), running `python argv...`. A no-op (returns) when jemalloc is
    already in use, is not installed, or this process was already started
    again (no loop)."""
    library = library or find_jemalloc()
    if library is None or os.environ.get(REEXEC_MARKER) or allocator() == "jemalloc":
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    env[REEXEC_MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
