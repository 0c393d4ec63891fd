"""Timing settings side by side: interleaved on slices of docs, several
repetitions, paired ratios.

Wall-clock time on a shared machine drifts; comparing two things measured
minutes apart mixes their difference with the drift. So every contestant
(an exit setting, or another pipeline) is timed on the first slice of docs,
then every contestant on the next slice, and so on, the order reversed every
other repetition; a speed-up is the median over repetitions of the ratio of
two contestants' times in the same repetition (`paired_speedup`).
"""
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.tokens import Doc

COMPONENT = "earlyexit_tagger"


def fresh_docs(nlp: Language, gold_docs: Sequence[Doc]) -> List[Doc]:
    """Unannotated docs with the gold tokenization (for a task that makes its
    own tokens, e.g. segment: the pipeline's tokenization of the text)."""
    if COMPONENT in nlp.pipe_names and nlp.get_pipe(COMPONENT).task.retokenizes:
        return [nlp.make_doc(doc.text) for doc in gold_docs]
    return [
        Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
        for doc in gold_docs
    ]


def paired_speedup(base_seconds: Sequence[float], seconds: Sequence[float]) -> Optional[float]:
    """Wall-clock speed-up over the baseline: the median, over repetitions, of
    baseline seconds / seconds in the same repetition.

    Runs of one repetition are close in time, so their ratio cancels slow
    drifts of the machine's speed (other jobs, memory state) that a ratio of
    the two medians keeps. base_seconds, seconds: [R] per repetition.
    """
    ratios = paired_ratios(base_seconds, seconds)
    return statistics.median(ratios) if ratios else None


def paired_ratios(base_seconds: Sequence[float], seconds: Sequence[float]) -> List[float]:
    """baseline seconds / seconds of every repetition (the spread behind
    paired_speedup; repetitions with no time are left out).
    base_seconds, seconds: [R] per repetition."""
    if len(base_seconds) != len(seconds):
        raise ValueError(f"{len(base_seconds)} baseline timings against {len(seconds)}")
    return [base / own for base, own in zip(base_seconds, seconds) if own > 0]


def doc_slices(n_docs: int, slice_docs: int) -> List[slice]:
    """Consecutive slices of at most slice_docs docs that cover n_docs."""
    if slice_docs < 1:
        raise ValueError(f"slice_docs must be >= 1; got {slice_docs}")
    return [slice(start, min(start + slice_docs, n_docs)) for start in range(0, n_docs, slice_docs)]


def time_pipe(
    nlp: Language, docs: List[Doc], batch_size: int, setting: Optional[Mapping[str, Any]] = None
) -> Tuple[float, List[Doc]]:
    """(seconds, annotated docs) of nlp.pipe over `docs`, with `setting` as
    the earlyexit_tagger's per-call exit setting (None: none)."""
    component_cfg = {COMPONENT: dict(setting)} if setting is not None else None
    start = time.perf_counter()
    annotated = list(nlp.pipe(docs, batch_size=batch_size, component_cfg=component_cfg))
    return time.perf_counter() - start, annotated


@dataclass
class Contestant:
    """Something timed on slices of docs.

    run: seconds for one slice (it may keep what it annotated);
    repetitions: time it only in the first N repetitions (None: all).
    """

    name: str
    run: Callable[[slice], float]
    repetitions: Optional[int] = None


def time_interleaved(
    contestants: Sequence[Contestant],
    n_docs: int,
    *,
    repetitions: int,
    slice_docs: int,
    after_run: Optional[Callable[[Contestant], None]] = None,
) -> Dict[str, List[float]]:
    """Seconds per repetition of every contestant over all n_docs docs,
    timed interleaved on slices of slice_docs docs (see the module docstring).
    after_run: called after each contestant's run on a slice (progress)."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1; got {repetitions}")
    parts = doc_slices(n_docs, slice_docs)
    seconds: Dict[str, List[float]] = {c.name: [] for c in contestants}
    for repetition in range(repetitions):
        active = [c for c in contestants if c.repetitions is None or repetition < c.repetitions]
        order = active if repetition % 2 == 0 else active[::-1]
        for contestant in order:
            seconds[contestant.name].append(0.0)
        for part in parts:
            for contestant in order:
                seconds[contestant.name][-1] += contestant.run(part)
                if after_run is not None:
                    after_run(contestant)
    return seconds


def words_per_second(n_words: int, seconds: Iterable[float]) -> Optional[float]:
    """n_words over the median of the timings."""
    median = statistics.median(list(seconds))
    return n_words / median if median > 0 else None
