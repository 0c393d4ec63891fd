"""Choosing an operating point from a sweep, and saving it in a pipeline.

The selection functions are pure: they take the sweep's rows (dicts with
"model", "setting", "score" and the speed-up columns; see sweep.run_sweep)
and return one row, or None when no row qualifies.

A loss budget has two rules. "point": the fastest row whose dev loss is
within the budget; a dev set is one sample of documents, so the row that
just makes it on dev often loses more on unseen data. "confident" (the
default of `choose --max-loss`): the fastest row whose one-sided upper bound
of the loss (paired bootstrap over the dev documents, bootstrap.py) at the
given confidence is within the budget.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import spacy
from spacy.language import Language

from .bootstrap import upper_bound
from .grid import is_baseline

SPEEDUP_KEYS = ("flops_speedup", "wall_speedup")
COMPONENT = "earlyexit_tagger"
# model="any": every pipeline of the sweep competes (e.g. stage 1 against stage 2,
# whichever scores better at the target); a pipeline really named "any" is taken by name
ANY_MODEL = "any"
#: the rules of a loss budget (see the module docstring); the first is the default
LOSS_RULES = ("confident", "point")
DEFAULT_CONFIDENCE = 0.9

Row = Mapping[str, Any]


def _rows_of(rows: Sequence[Row], model: Optional[str], speedup_key: str) -> List[Row]:
    if speedup_key not in SPEEDUP_KEYS:
        raise ValueError(f"speedup_key must be one of {', '.join(SPEEDUP_KEYS)}; got {speedup_key!r}")
    rows = [row for row in rows if row.get("setting") is not None]  # not reference pipelines
    models = sorted({row["model"] for row in rows})
    if model == ANY_MODEL and model not in models:
        model = None
    elif model is None:
        if len(models) > 1:
            raise ValueError(f"the sweep has several pipelines ({', '.join(models)}): "
                             f"name one, or {ANY_MODEL!r} to let them compete")
    elif model not in models:
        raise ValueError(f"no rows for pipeline {model!r} in the sweep (it has: {', '.join(models)})")
    return [
        row for row in rows
        if (model is None or row["model"] == model)
        and row.get("score") is not None and row.get(speedup_key) is not None
    ]


def baseline_score(rows: Sequence[Row], model: Optional[str] = None) -> float:
    """The score of the pipeline's exit_mode "off" row at full depth (no max_layer);
    with model="any", the best such score of the sweep's pipelines."""
    off = [row for row in _rows_of(rows, model, "flops_speedup") if is_baseline(row["setting"])]
    if not off:
        raise ValueError("the sweep has no exit_mode 'off' row at full depth to compare with")
    return float(max(row["score"] for row in off))


def pick_for_speedup(
    rows: Sequence[Row],
    target_speedup: float,
    *,
    speedup_key: str = "flops_speedup",
    model: Optional[str] = None,
) -> Optional[Row]:
    """The row with the best score among those with speed-up >= target
    (ties: the faster one). None if no row is fast enough.

    speedup_key: "flops_speedup" (analytic, reproducible) or "wall_speedup"
        (measured on the machine that ran the sweep).
    model: which pipeline's rows (needed when the sweep has several); "any": the
        rows of all of them compete.
    """
    candidates = [row for row in _rows_of(rows, model, speedup_key) if row[speedup_key] >= target_speedup]
    if not candidates:
        return None
    return max(candidates, key=lambda row: (row["score"], row[speedup_key]))


def pick_within_loss(
    rows: Sequence[Row],
    max_loss: float,
    *,
    speedup_key: str = "flops_speedup",
    model: Optional[str] = None,
) -> Optional[Row]:
    """The fastest row whose score is at most `max_loss` below the "off"
    row's at full depth (ties: the better score). max_loss is in the score's own units:
    0.01 is one point of F1 or accuracy. With model="any" the loss is counted from the
    best full-depth score of the sweep's pipelines."""
    if max_loss < 0:
        raise ValueError(f"max_loss must be >= 0; got {max_loss}")
    floor = baseline_score(rows, model) - max_loss - 1e-12
    candidates = [row for row in _rows_of(rows, model, speedup_key) if row["score"] >= floor]
    if not candidates:
        return None
    return max(candidates, key=lambda row: (row[speedup_key], row["score"]))


@dataclass(frozen=True)
class Bounded:
    """A row with its upper bound of the loss at the rule's confidence (score
    units; with model="any" counted from the best full-depth score)."""

    row: Row
    bound: float


@dataclass(frozen=True)
class ConfidentChoice:
    """What the confident rule found.

    chosen: the fastest row whose bound is within the budget (None: none is);
    runner_up: the next-fastest row that also qualifies;
    faster_failing: the next faster row than the chosen one (the slowest of
        those faster), which does not qualify: its bound is above the budget
        (often the row a rule on the dev loss alone would pick);
    closest: when none qualifies, the row with the smallest bound.
    """

    chosen: Optional[Bounded]
    runner_up: Optional[Bounded]
    faster_failing: Optional[Bounded]
    closest: Optional[Bounded]


class NoIntervalsError(ValueError):
    """The sweep has no loss intervals (written before they existed, or with
    the bootstrap off): the confident rule cannot be applied."""


def bounded_rows(
    rows: Sequence[Row],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    speedup_key: str = "flops_speedup",
    model: Optional[str] = None,
) -> List[Bounded]:
    """The candidate rows of the confident rule with their upper bound of the
    loss at `confidence`: every scored row with a speed-up and a loss record
    except exit mode "off" at full depth itself (the reference, whose loss is
    0 by definition). With model="any" a row's bound, measured against its
    own pipeline's "off", is raised by how far that "off" scores below the
    best one. Raises NoIntervalsError when no row has a loss record,
    ValueError for a confidence the sweep did not record."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1; got {confidence}")
    candidates = _rows_of(rows, model, speedup_key)
    if not any(row.get("loss") for row in candidates):
        raise NoIntervalsError(
            "the sweep has no loss intervals (written before they were recorded, or with --bootstrap 0)"
        )
    best = baseline_score(rows, model)
    own_off = {row["model"]: float(row["score"]) for row in candidates if is_baseline(row["setting"])}
    bounded = []
    for row in candidates:
        bound = upper_bound(row.get("loss"), confidence)
        if bound is None or is_baseline(row["setting"]) or row["model"] not in own_off:
            continue
        bounded.append(Bounded(row, bound + (best - own_off[row["model"]])))
    return bounded


def pick_confident(
    rows: Sequence[Row],
    max_loss: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    speedup_key: str = "flops_speedup",
    model: Optional[str] = None,
) -> ConfidentChoice:
    """The fastest row whose upper bound of the loss at `confidence` is at
    most `max_loss` (ties: the smaller bound), with the runner-up and the
    next faster row, which fails, or, when none qualifies, the closest row
    (see ConfidentChoice). max_loss is in the score's units (0.01: one point)."""
    if max_loss < 0:
        raise ValueError(f"max_loss must be >= 0; got {max_loss}")
    bounded = bounded_rows(rows, confidence=confidence, speedup_key=speedup_key, model=model)
    ranked = sorted(bounded, key=lambda item: (-item.row[speedup_key], item.bound))
    qualifying = [item for item in ranked if item.bound <= max_loss + 1e-12]
    if not qualifying:
        closest = min(bounded, key=lambda item: (item.bound, -item.row[speedup_key])) if bounded else None
        return ConfidentChoice(None, None, None, closest)
    chosen = qualifying[0]
    passed = {id(item) for item in qualifying}
    faster = [item for item in ranked if item.row[speedup_key] > chosen.row[speedup_key] and id(item) not in passed]
    return ConfidentChoice(chosen, qualifying[1] if len(qualifying) > 1 else None,
                           faster[-1] if faster else None, None)


def exit_changes(row: Row) -> Dict[str, Any]:
    """The configure_exit arguments of a sweep row. They always set
    max_layer: a row without it (e.g. from a sweep older than the setting)
    ran at full depth, so a depth cap saved in the pipeline is removed."""
    return {**row["setting"], "max_layer": row["setting"].get("max_layer")}


def write_operating_point(
    pipeline: Union[str, Path],
    row: Row,
    output: Optional[Union[str, Path]] = None,
) -> Path:
    """Load `pipeline`, set the row's exit setting as its saved default and
    save it to `output` (default: in place); see save_operating_point.
    Returns the output folder."""
    target = Path(output) if output is not None else Path(pipeline)
    return save_operating_point(spacy.load(pipeline), row, target)


def save_operating_point(nlp: Language, row: Row, output: Union[str, Path]) -> Path:
    """Set the row's exit setting as the earlyexit_tagger's saved default
    (configure_exit, which validates it for the pipeline and keeps it in the
    pipeline's config) and save the pipeline to `output` (nlp.to_disk).
    Returns the output folder."""
    nlp.get_pipe(COMPONENT).configure_exit(**exit_changes(row))
    target = Path(output)
    nlp.to_disk(target)
    return target
