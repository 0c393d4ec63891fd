"""Choosing an operating point from a sweep, and saving it in a pipeline.

The selection functions are pure: they take the sweep's rows (dicts with
"model", "setting", "score" and the speed-up columns; see sweep.run_sweep)
and return one row, or None when no row qualifies.
"""
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import spacy
from spacy.language import Language

from .grid import is_baseline

SPEEDUP_KEYS = ("flops_speedup", "wall_speedup")
COMPONENT = "earlyexit_tagger"
# model="any": every pipeline of the sweep competes (e.g. stage 1 against stage 2,
# whichever scores better at the target); a pipeline really named "any" is taken by name
ANY_MODEL = "any"

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
