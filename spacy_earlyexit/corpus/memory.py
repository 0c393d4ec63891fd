"""Resident memory of long inference runs: glibc tuning on request, jemalloc.

Batches of different shapes leave freed blocks in glibc's heap; its resident
memory (RSS) can creep up over tens of thousands of docs although nothing
leaks. The package does not tune the process's malloc by itself: a
long-running process asks for it with `configure()`:

- `release_every_docs=N`: `EarlyExitTagger.pipe` calls `malloc_trim(0)` once
  every N docs, counted over all calls in the process (so a service calling
  nlp.pipe per request releases too). It gives back free pages and frees
  nothing in use, but every page the next batches touch again then costs a
  page fault: keep N large.
- `mmap_threshold=BYTES`: allocations of that size or more get their own
  mapping, returned to the system when freed (glibc's M_MMAP_THRESHOLD,
  process-wide; it costs speed).

Elsewhere than glibc both are no-ops. jemalloc keeps RSS flatter than either:
preload it for long runs
(`LD_PRELOAD=$(python -m spacy_earlyexit jemalloc-path)`);
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
#: between two releases of free memory (0: never; see configure)
RELEASE_EVERY_DOCS = 0
_docs_since_release = 0
#: allocations of at least this many bytes are mapped on their own (0: glibc's
#: default; see configure)
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


def configure(release_every_docs: Optional[int] = None, mmap_threshold: Optional[int] = None) -> None:
    """Ask for glibc tuning during nlp.pipe (see the module docstring); None
    leaves a setting as it is, 0 turns it off. The mmap threshold, once set
    in a process, stays set."""
    global RELEASE_EVERY_DOCS, MMAP_THRESHOLD
    for name, value in (("release_every_docs", release_every_docs), ("mmap_threshold", mmap_threshold)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0 (0: off); got {value!r}")
    if release_every_docs is not None:
        RELEASE_EVERY_DOCS = release_every_docs
    if mmap_threshold is not None:
        MMAP_THRESHOLD = mmap_threshold


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
