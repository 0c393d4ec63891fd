"""How sure a setting's loss is: a paired bootstrap over dev documents.

A setting that loses 0.35 points on dev may lose 0.54 on unseen data: the
dev set is one sample of documents. The bootstrap draws `resamples` multisets
of the dev documents (with replacement, a fixed seed) and, on each, scores
both the setting and exit mode "off" of the same pipeline on the SAME
documents (paired): the spread of the differences says how much the loss
depends on which documents happened to be in dev. A resample's score is the
task's headline score of the summed per-document counts (doc_counts.py), so
the identity resample gives the sweep's own score exactly.

Losses are in the score's units (0.01 is one point), positive when the
setting scores below "off".
"""
from typing import Any, Dict, Optional, Sequence

import numpy

from .doc_counts import fscore

#: resamples and seed of a sweep's bootstrap unless asked otherwise
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
#: the central interval recorded per row (5% to 95%)
INTERVAL = 0.9
#: confidence levels whose one-sided upper bound of the loss is recorded
#: (`choose --confidence` takes one of them)
UPPER_LEVELS = (0.8, 0.9, 0.95, 0.975, 0.99)


def level_key(level: float) -> str:
    """The JSON key of a confidence level: 0.9 -> "0.9"."""
    return f"{level:g}"


def resample_weights(n_docs: int, resamples: int, seed: int) -> numpy.ndarray:
    """[resamples, n_docs] int64: how often each doc is drawn in each
    resample (n_docs draws with replacement per resample, numpy's PCG64
    generator seeded with `seed`). The same matrix serves every setting and
    pipeline of a sweep, which is what makes the comparison paired."""
    if n_docs < 1:
        raise ValueError(f"the bootstrap needs at least one document; got {n_docs}")
    if resamples < 1:
        raise ValueError(f"the bootstrap needs at least one resample; got {resamples}")
    drawn = numpy.random.default_rng(seed).integers(0, n_docs, size=(resamples, n_docs))
    offsets = numpy.arange(resamples, dtype="int64")[:, None] * n_docs
    counts = numpy.bincount((drawn + offsets).ravel(), minlength=resamples * n_docs)
    return counts.reshape(resamples, n_docs).astype("int64")


def resampled_scores(counts: numpy.ndarray, weights: numpy.ndarray) -> numpy.ndarray:
    """[R] the headline score of every resample.

    counts: [D, 3] per-document (tp, fp, fn); weights: [R, D] multiplicities
    (resample_weights)."""
    counts = numpy.asarray(counts, dtype="int64")
    if counts.ndim != 2 or counts.shape[1] != 3 or weights.shape[1] != counts.shape[0]:
        raise ValueError(f"counts {counts.shape} do not fit resample weights {weights.shape} (need [D, 3], [R, D])")
    # float64 products of small integers are exact (below 2**53) and use BLAS
    return fscore(weights.astype("float64") @ counts.astype("float64"))


def paired_losses(off_counts: numpy.ndarray, counts: numpy.ndarray, weights: numpy.ndarray) -> numpy.ndarray:
    """[R] score of "off" minus score of the setting, each resample scoring
    both on the same documents. off_counts, counts: [D, 3]; weights: [R, D]."""
    if numpy.shape(off_counts) != numpy.shape(counts):
        raise ValueError(f"'off' has counts {numpy.shape(off_counts)}, the setting {numpy.shape(counts)}: "
                         "a paired bootstrap needs the same documents")
    return resampled_scores(off_counts, weights) - resampled_scores(counts, weights)


def loss_summary(
    off_counts: numpy.ndarray,
    counts: numpy.ndarray,
    weights: numpy.ndarray,
    *,
    seed: int,
    upper_levels: Sequence[float] = UPPER_LEVELS,
) -> Dict[str, Any]:
    """The JSON record of a setting's loss against "off":

    point: the loss on the whole dev set; mean: over the resamples;
    low, high: the central `interval` (5% and 95% quantiles); upper: level
    ("0.9") -> one-sided upper bound (that quantile of the losses);
    resamples, seed: how the resamples were drawn.
    """
    losses = paired_losses(off_counts, counts, weights)
    tail = (1.0 - INTERVAL) / 2
    point = float(fscore(numpy.asarray(off_counts).sum(0)) - fscore(numpy.asarray(counts).sum(0)))
    return {
        "point": point,
        "mean": float(losses.mean()),
        "low": float(numpy.quantile(losses, tail)),
        "high": float(numpy.quantile(losses, 1.0 - tail)),
        "interval": INTERVAL,
        "upper": {level_key(level): float(numpy.quantile(losses, level)) for level in upper_levels},
        "resamples": int(weights.shape[0]),
        "seed": int(seed),
    }


def upper_bound(loss: Optional[Dict[str, Any]], confidence: float) -> Optional[float]:
    """The recorded one-sided upper bound of a row's loss at `confidence`
    (None: the row has no loss record). Raises ValueError for a level the
    sweep did not record, naming those it did."""
    if not loss:
        return None
    bounds = loss.get("upper") or {}
    key = level_key(confidence)
    if key not in bounds:
        raise ValueError(f"the sweep recorded loss bounds at confidence {', '.join(sorted(bounds))}, not {key}")
    return float(bounds[key])
