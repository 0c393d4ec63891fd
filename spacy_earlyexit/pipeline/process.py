"""Fork safety: worker processes forked from a process that already ran the pipeline.

`nlp.pipe(texts, n_process=2)` starts its workers with multiprocessing's
default start method, which is fork on Linux. Two libraries keep thread pools
that do not survive a fork:

- torch's intra-op pool is GNU OpenMP's (libgomp, in the Linux wheels). Once
  the parent has run a parallel region with more than one thread, a forked
  child that starts one waits forever for pool threads that were not copied
  (workers at 0% CPU). `torch.set_num_threads(1)` in the child runs every
  operation on the calling thread, outside libgomp's pool; 1 is also what a
  child may use at all: setting more in a forked child hangs again.
- Hugging Face tokenizers (Rust, rayon) disables its parallelism in a forked
  child by itself, but prints a "TOKENIZERS_PARALLELISM" warning to stderr in
  every child unless the variable is set.

`register_fork_handlers()` (run when this module is imported, from the
package's __init__, so before any worker of a loaded pipeline) adds
`os.register_at_fork` handlers:

- before a fork: set TOKENIZERS_PARALLELISM=false if it is unset, so that
  the child (which copies the environment at the fork) starts with
  tokenizers' parallelism configured off: no warning, and the same sequential
  tokenization it would have switched to;
- after, in the parent: unset it again, so the parent keeps tokenizing in
  parallel (another parent thread tokenizing during the fork itself may run
  that one batch sequentially: same output);
- after, in the child: `torch.set_num_threads(1)` (if torch is imported);
  TOKENIZERS_PARALLELISM=false stays set in the child.

A user's own TOKENIZERS_PARALLELISM is never changed. Workers started with
spawn or forkserver are fresh interpreters: they need none of this and start
with torch's default thread count (all cores per worker; set OMP_NUM_THREADS
in the parent's environment before starting them to limit it).
"""
import os
import sys
import threading

TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
#: torch threads of a forked child (more hang in libgomp, see the module docstring)
FORKED_CHILD_THREADS = 1

_registered = False
_lock = threading.Lock()
_forks_in_progress = 0
_set_by_us = False


def _before_fork() -> None:
    global _forks_in_progress, _set_by_us
    with _lock:
        if _forks_in_progress == 0 and TOKENIZERS_PARALLELISM not in os.environ:
            os.environ[TOKENIZERS_PARALLELISM] = "false"
            _set_by_us = True
        _forks_in_progress += 1


def _after_fork_in_parent() -> None:
    global _forks_in_progress, _set_by_us
    with _lock:
        _forks_in_progress -= 1
        if _forks_in_progress == 0 and _set_by_us:
            os.environ.pop(TOKENIZERS_PARALLELISM, None)
            _set_by_us = False


def _after_fork_in_child() -> None:
    global _lock, _forks_in_progress, _set_by_us
    # the copied lock may be held by a parent thread that does not exist here;
    # the child keeps TOKENIZERS_PARALLELISM=false for good
    _lock = threading.Lock()
    _forks_in_progress = 0
    _set_by_us = False
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(FORKED_CHILD_THREADS)


def register_fork_handlers() -> None:
    """Register the fork handlers of this module, once per process."""
    global _registered
    if _registered or not hasattr(os, "register_at_fork"):  # Windows: no fork
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    _registered = True


register_fork_handlers()
