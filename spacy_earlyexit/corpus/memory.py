"""Resident memory of long inference runs on glibc's malloc, and jemalloc.

The component keeps its own memory churn small at the source: the hidden
states of a call live in one block reused across calls
(model/state_arena.py), and the per-row work runs on row counts rounded up to
a few sizes (model/packed_layer.py, bucket_rows), so glibc's heap and
oneDNN's primitive cache see the same few shapes again and again instead of
new ones in every batch. The process's resident memory (RSS) then levels off
after a warm-up on glibc's malloc as it is.

For pipelines or processes where something else still makes it creep, a
fallback that gives free pages back with glibc's `malloc_trim(0)` (it frees
nothing in use, but the next batches page-fault the memory in again):

- growth guard (`release_on_growth`, off by default; 0.05 is a good
  setting): every `check_every_docs` docs (default 256) annotated by
  `EarlyExitTagger.pipe` or `__call__`, read RSS; once it has grown by more
  than that share (and at least `min_growth_mb`, default 64) above what it
  was after the last release, release. Memory that is really in use raises
  the mark instead of causing another release.
- `release_every_docs=N`: release once every N docs, whatever RSS does.
- `mmap_threshold=BYTES`: allocations of that size or more get their own
  mapping, returned to the system when freed (glibc's M_MMAP_THRESHOLD,
  process-wide; it costs speed).

`configure()` sets them; elsewhere than glibc they are no-ops. jemalloc also
keeps RSS flat (`LD_PRELOAD=$(python -m spacy_earlyexit jemalloc-path)`);
`python -m spacy_earlyexit annotate` restarts itself on it when it is
installed (`find_jemalloc`, `preload_jemalloc`), unless told
`--allocator system`.
"""
import ctypes
import ctypes.util
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

#: docs annotated by EarlyExitTagger.pipe, over all calls in the process,
#: between two releases of free memory (0: never; see configure)
RELEASE_EVERY_DOCS = 0
_docs_since_release = 0
#: growth guard: release once RSS is this share above its mark (0: off)
RELEASE_ON_GROWTH = 0.0
#: ... and at least this many MB above it
MIN_GROWTH_MB = 64
#: docs between two readings of RSS by the growth guard
CHECK_EVERY_DOCS = 256
_docs_since_check = 0
#: RSS (bytes) after the last release, or at the first reading
_mark: Optional[int] = None
#: releases so far in this process, and the seconds they took
releases = 0
release_seconds = 0.0
#: allocations of at least this many bytes are mapped on their own (0: glibc's
#: default; see configure)
MMAP_THRESHOLD = 0
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_threshold_set = False

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
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


def configure(
    release_every_docs: Optional[int] = None,
    mmap_threshold: Optional[int] = None,
    *,
    release_on_growth: Optional[float] = None,
    min_growth_mb: Optional[int] = None,
    check_every_docs: Optional[int] = None,
) -> None:
    """Set how the component keeps resident memory in check on glibc (see
    the module docstring); None leaves a setting as it is, 0 turns it off
    (check_every_docs: must be >= 1). The mmap threshold, once set in a
    process, stays set."""
    global RELEASE_EVERY_DOCS, MMAP_THRESHOLD, RELEASE_ON_GROWTH, MIN_GROWTH_MB, CHECK_EVERY_DOCS
    for name, value in (
        ("release_every_docs", release_every_docs), ("mmap_threshold", mmap_threshold),
        ("min_growth_mb", min_growth_mb),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0 (0: off); got {value!r}")
    if check_every_docs is not None and (
        isinstance(check_every_docs, bool) or not isinstance(check_every_docs, int) or check_every_docs < 1
    ):
        raise ValueError(f"check_every_docs must be an integer >= 1; got {check_every_docs!r}")
    if release_on_growth is not None and (
        isinstance(release_on_growth, bool) or not isinstance(release_on_growth, (int, float))
        or not 0 <= release_on_growth
    ):
        raise ValueError(f"release_on_growth must be a share >= 0 (0.05: 5%; 0: off); got {release_on_growth!r}")
    if release_every_docs is not None:
        RELEASE_EVERY_DOCS = release_every_docs
    if mmap_threshold is not None:
        MMAP_THRESHOLD = mmap_threshold
    if release_on_growth is not None:
        RELEASE_ON_GROWTH = float(release_on_growth)
    if min_growth_mb is not None:
        MIN_GROWTH_MB = min_growth_mb
    if check_every_docs is not None:
        CHECK_EVERY_DOCS = check_every_docs


def resident_bytes() -> Optional[int]:
    """This process's resident memory (RSS) from /proc/self/statm; None
    where there is no such file."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free memory to the system; False where unsupported."""
    global releases, release_seconds, _mark
    libc = _glibc()
    if libc is None:
        return False
    start = time.perf_counter()
    libc.malloc_trim(0)
    release_seconds += time.perf_counter() - start
    releases += 1
    _mark = resident_bytes()
    return True


def count_docs(n_docs: int) -> bool:
    """Note that n_docs more docs were annotated (counted over all calls in
    the process, so that a service annotating one doc per request is
    guarded too): release free memory once RELEASE_EVERY_DOCS docs have
    been annotated since the last release, or when the growth guard finds
    RSS above its mark (at most one reading per CHECK_EVERY_DOCS docs).
    Returns whether it released."""
    global _docs_since_release, _docs_since_check, _mark
    _docs_since_release += n_docs
    _docs_since_check += n_docs
    if RELEASE_EVERY_DOCS and _docs_since_release >= RELEASE_EVERY_DOCS:
        _docs_since_release = _docs_since_check = 0
        return release_free_memory()
    if not RELEASE_ON_GROWTH or _docs_since_check < CHECK_EVERY_DOCS or _glibc() is None:
        return False
    _docs_since_check = 0
    rss = resident_bytes()
    if rss is None:
        return False
    if _mark is None:
        _mark = rss
        return False
    if rss - _mark <= max(RELEASE_ON_GROWTH * _mark, MIN_GROWTH_MB * 2**20):
        return False
    _docs_since_release = 0
    return release_free_memory()  # the new mark: what stays resident, i.e. in use


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
