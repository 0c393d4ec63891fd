"""A learning-rate schedule sized by the training corpus: warm-up and
linear decay over a number of epochs, whatever the corpus's size.

thinc's `warmup_linear.v1` needs its total number of steps in the config,
which is right for one corpus only: a recipe written for 14,000 sentences
decays too early on 2,000 and too late on 50,000. This schedule counts the
words of the training corpus when the config is resolved and derives the
steps from epochs x words / words per batch (spaCy's batch_by_words).
"""
import math
from pathlib import Path
from typing import Iterable, Optional, Union

from spacy.tokens import DocBin
from spacy.util import registry
from thinc.api import warmup_linear


def corpus_words(path: Optional[Union[str, Path]]) -> int:
    """The number of tokens of a .spacy file (a DocBin), or of every .spacy
    file in a folder (as spaCy's Corpus reads a folder)."""
    if path is None or str(path) in ("", "None"):
        raise ValueError("the learning-rate schedule counts the training corpus's words: set paths.train")
    path = Path(path)
    files = sorted(path.rglob("*.spacy")) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise ValueError(f"no training corpus at {path}: the schedule counts its words to size itself")
    return sum(len(tokens) for f in files for tokens in DocBin().from_disk(f).tokens)


def steps_for(n_words: int, epochs: float, words_per_batch: int) -> int:
    """Training steps of `epochs` passes over n_words in batches of about
    words_per_batch words (at least 1)."""
    if words_per_batch < 1 or epochs <= 0:
        raise ValueError(f"need words_per_batch >= 1 and epochs > 0; got {words_per_batch}, {epochs}")
    return max(1, math.ceil(epochs * n_words / words_per_batch))


@registry.schedules("spacy_earlyexit.warmup_linear_epochs.v1")
def warmup_linear_epochs(
    corpus: Optional[str],
    epochs: float,
    words_per_batch: int,
    initial_rate: float,
    warmup_share: float = 0.1,
    total_steps: int = 0,
    warmup_steps: int = 0,
) -> Iterable[float]:
    """thinc's warmup_linear with its steps derived from the corpus: total
    = epochs x words / words_per_batch, warm-up = warmup_share of that.

    corpus: the training .spacy file (e.g. ${paths.train}); epochs: usually
    ${training.max_epochs}; words_per_batch: ${training.batcher.size}.
    total_steps, warmup_steps: fixed numbers instead (0: derived), for runs
    bounded by max_steps (max_epochs = 0), as the demo's.
    """
    if not 0.0 <= warmup_share < 1.0:
        raise ValueError(f"warmup_share must be in [0, 1); got {warmup_share}")
    if total_steps <= 0:
        if epochs <= 0:
            raise ValueError(
                "the learning-rate schedule needs max_epochs > 0 to size itself by the corpus, "
                "or total_steps (e.g. equal to max_steps when max_epochs = 0)"
            )
        total_steps = steps_for(corpus_words(corpus), epochs, words_per_batch)
    if warmup_steps <= 0:
        warmup_steps = max(1, round(warmup_share * total_steps))
    return warmup_linear(initial_rate, warmup_steps, total_steps)
