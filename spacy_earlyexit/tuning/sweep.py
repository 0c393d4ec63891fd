"""The speed/accuracy sweep: exit mode x threshold x window (x depth cap)
on a dev set.

For every trained pipeline given (e.g. stage 1 and stage 2) and every setting
of the grid: the task's headline score, mean exit layer, analytic FLOPs
speed-up, measured words/s of nlp.pipe and the wall-clock speed-up over the
same pipeline with exit mode "off" (with the spread of its per-repetition
ratios), and the loss against "off" with a paired bootstrap interval over the
dev documents (bootstrap.py). All settings run in one process,
interleaved on slices of docs, and the timings are medians over the
repetitions (timing.py). Other pipelines (e.g. plain spacy-transformers, a
CNN pipeline) can be timed alongside as references. Results are written as
JSON, a markdown table and (with matplotlib, the "plot" extra) a PNG plot of
score against speed-up.
"""
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from tqdm import tqdm

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, INTERVAL, UPPER_LEVELS, loss_summary, resample_weights
from .check import check_grid
from .doc_counts import counter_for, document_counts, fscore
from .grid import (  # noqa: F401 (re-exported)
    build_grid, dial_series, entity_label, is_baseline, parse_later_factors, parse_max_layers, schedule_label,
    setting_name,
)
from .timing import (  # noqa: F401 (re-exported)
    COMPONENT, Contestant, doc_slices, fresh_docs, paired_ratios, paired_speedup, time_interleaved, time_pipe,
    words_per_second,
)


def run_sweep(
    pipelines: Mapping[str, Union[str, Path, Language]],
    dev_path: Union[str, Path],
    grid: Sequence[Mapping[str, Any]],
    *,
    repetitions: int = 3,
    batch_size: int = 1024,
    limit: int = 0,
    slice_docs: int = 0,
    progress: bool = True,
    references: Optional[Mapping[str, Language]] = None,
    reference_repetitions: Optional[int] = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Any]:
    """Score and time every setting of `grid` on every pipeline.

    pipelines: name (e.g. "stage1") -> pipeline folder or loaded Language,
        each with an earlyexit_tagger.
    dev_path: .spacy file with gold annotation; limit: use only its first N
        docs (0: all).
    grid: settings as accepted by configure_exit (see build_grid); one of
        them should be {"exit_mode": "off"}, the wall-clock baseline. A
        setting without max_layer runs at full depth (max_layer None, not
        the pipeline's saved cap); each row's setting records it.
    slice_docs: interleave the settings on slices of this many docs (0: one
        nlp.pipe batch, batch_size docs).
    references: other pipelines (name -> Language) timed alongside on the
        same docs, for throughput only (rows with setting None); only in the
        first reference_repetitions repetitions when given.
    bootstrap, seed: resamples of the dev documents for each row's loss
        interval, and the seed that draws them (bootstrap 0: no intervals;
        see bootstrap.py).
    Returns a JSON-friendly dict; its "rows" hold, per pipeline and setting:
    model, name, setting (with max_layer), score, per_type (NER: entity
    type -> F, so that one sees which types early exit hurts),
    exit_layer_mean, flops_speedup, seconds (per repetition),
    words_per_second, wall_speedup (median of the per-repetition paired
    ratios), wall_speedup_ratios (those ratios), wall_speedup_range ([min,
    max] of them) and, with the bootstrap, loss (bootstrap.loss_summary:
    point, mean, low, high, interval, upper, resamples, seed). The top-level
    "bootstrap" says how the intervals were drawn (None: none were).
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples; got {bootstrap}")
    loaded: Dict[str, Language] = {}
    gold: Dict[str, List[Doc]] = {}
    score_key: Optional[str] = None
    for model_name, pipeline in pipelines.items():
        nlp = pipeline if isinstance(pipeline, Language) else spacy.load(pipeline)
        tagger = nlp.get_pipe(COMPONENT)
        tagger.cfg["score_layers"] = False  # per-off-ramp scores are not needed here
        key = tagger.task.score_keys[0]
        if score_key not in (None, key):
            raise ValueError(f"the pipelines have different tasks ({score_key} vs {key})")
        score_key = key
        docs = list(DocBin().from_disk(dev_path).get_docs(nlp.vocab))
        gold[model_name] = docs[:limit] if limit else docs
        loaded[model_name] = nlp
    if not loaded:
        raise ValueError("no pipelines to sweep")
    check_grid(loaded, grid)  # every setting on every pipeline, before any timing
    first = next(iter(gold.values()))
    n_words = sum(len(doc) for doc in first)
    if not n_words:
        raise ValueError(f"{dev_path} has no words")

    rows: List[Dict[str, Any]] = [
        {"model": model_name, "name": setting_name(setting),
         "setting": {**setting, "max_layer": setting.get("max_layer")}}
        for model_name in loaded for setting in grid
    ]
    annotated: Dict[int, List[Doc]] = {id(row): [] for row in rows}

    def setting_run(row: Dict[str, Any]):
        nlp, docs = loaded[row["model"]], gold[row["model"]]

        def run(part: slice) -> float:
            seconds, done = time_pipe(nlp, fresh_docs(nlp, docs[part]), batch_size, row["setting"])
            if len(annotated[id(row)]) < len(docs):  # the first repetition's docs are scored
                annotated[id(row)].extend(done)
            return seconds

        return run

    reference_docs: Dict[str, List[Doc]] = {}

    def reference_run(name: str, nlp: Language):
        reference_docs[name] = []

        def run(part: slice) -> float:
            seconds, done = time_pipe(nlp, fresh_docs(nlp, first[part]), batch_size)
            if len(reference_docs[name]) < len(first):  # the first repetition's docs are scored
                reference_docs[name].extend(done)
            return seconds

        return run

    contestants = [Contestant(f"{row['model']} {row['name']}", setting_run(row)) for row in rows]
    for name, nlp in (references or {}).items():
        contestants.append(Contestant(name, reference_run(name, nlp), reference_repetitions))
        rows.append({"model": name, "name": name, "setting": None})
    for model_name, nlp in loaded.items():  # warm-up
        time_pipe(
            nlp, fresh_docs(nlp, gold[model_name][:64]), batch_size, {"exit_mode": "off", "max_layer": None}
        )
    for nlp in (references or {}).values():
        time_pipe(nlp, fresh_docs(nlp, first[:64]), batch_size)
    n_slices = len(doc_slices(len(first), slice_docs or batch_size))
    n_runs = n_slices * sum(min(repetitions, c.repetitions or repetitions) for c in contestants)
    with tqdm(total=n_runs, desc="sweep", unit="run", disable=not progress) as bar:
        seconds = time_interleaved(
            contestants, len(first), repetitions=repetitions, slice_docs=slice_docs or batch_size,
            after_run=lambda contestant: bar.update(1),
        )
    counts: Dict[int, Any] = {}  # id(row) -> [D, 3] per-document counts of the headline score
    for row, contestant in zip(rows, contestants):
        row["seconds"] = seconds[contestant.name]
        if row["setting"] is None:  # a reference pipeline: scored by the task's scorer, if it can be
            examples = [Example(doc, ref) for doc, ref in zip(reference_docs[row["name"]], first)]
            task = next(iter(loaded.values())).get_pipe(COMPONENT).task
            try:
                row["score"] = task.score(examples).get(score_key)
            except (KeyError, ValueError, TypeError):
                row["score"] = None
            continue
        examples = [Example(doc, ref) for doc, ref in zip(annotated[id(row)], gold[row["model"]])]
        scores = loaded[row["model"]].get_pipe(COMPONENT).score(examples)
        row["score"] = scores.get(score_key)
        if bootstrap and row["score"] is not None and score_key and counter_for(score_key) is not None:
            counts[id(row)] = document_counts(examples, score_key)
        per_type = per_type_scores(scores)
        if per_type is not None:
            row["per_type"] = per_type
        row["exit_layer_mean"] = scores.get("exit_layer_mean")
        row["flops_speedup"] = scores.get("flops_speedup")
    off = [row for row in rows if is_baseline(row["setting"])]
    base = {row["model"]: row["seconds"] for row in off}
    first_base = off[0]["seconds"] if off else None
    for row in rows:
        row["words_per_second"] = words_per_second(n_words, row["seconds"])
        baseline = base.get(row["model"], first_base if row["setting"] is None else None)
        row["wall_speedup"] = paired_speedup(baseline[: len(row["seconds"])], row["seconds"]) if baseline else None
        ratios = paired_ratios(baseline[: len(row["seconds"])], row["seconds"]) if baseline else []
        row["wall_speedup_ratios"] = ratios
        row["wall_speedup_range"] = [min(ratios), max(ratios)] if ratios else None
    drawn = add_loss_intervals(rows, off, counts, n_docs=len(first), resamples=bootstrap, seed=seed)
    return {
        "dev": str(dev_path),
        "n_docs": len(first),
        "n_words": n_words,
        "repetitions": repetitions,
        "batch_size": batch_size,
        "slice_docs": slice_docs or batch_size,
        "torch_threads": torch.get_num_threads(),
        "score_key": score_key,
        "bootstrap": {"resamples": bootstrap, "seed": seed, "interval": INTERVAL, "upper_levels": list(UPPER_LEVELS)}
        if drawn else None,
        "models": {name: str(p) if not isinstance(p, Language) else name for name, p in pipelines.items()},
        "rows": rows,
    }


def add_loss_intervals(
    rows: Sequence[Dict[str, Any]],
    off_rows: Sequence[Mapping[str, Any]],
    counts: Mapping[int, Any],
    *,
    n_docs: int,
    resamples: int,
    seed: int,
) -> bool:
    """Give every row with per-document counts a "loss" record against the
    "off" row of its pipeline (bootstrap.loss_summary), all rows on the same
    resamples. Rows whose counts do not give their own score back exactly
    (a scorer this package cannot decompose) get none, with a warning.
    Returns whether any row got one."""
    if not resamples or not counts:
        return False
    exact = {}
    for row in rows:
        own = counts.get(id(row))
        if own is None:
            continue
        if float(fscore(own.sum(0))) != row["score"]:
            warnings.warn(f"{row['model']} {row['name']}: the per-document counts do not give the score "
                          f"{row['score']!r} back; no loss interval for it", UserWarning, stacklevel=2)
            continue
        exact[id(row)] = own
    weights = resample_weights(n_docs, resamples, seed)
    off_counts = {row["model"]: exact.get(id(row)) for row in off_rows}
    drawn = False
    for row in rows:
        own, base = exact.get(id(row)), off_counts.get(row["model"])
        if own is not None and base is not None:
            row["loss"] = loss_summary(base, own, weights, seed=seed)
            drawn = True
    return drawn


def per_type_scores(scores: Mapping[str, Any]) -> Optional[Dict[str, float]]:
    """Entity type -> F from the scorer's ents_per_type (None for tasks
    without entity types)."""
    per_type = scores.get("ents_per_type")
    if not isinstance(per_type, Mapping):
        return None
    return {label: float(values.get("f", 0.0)) for label, values in sorted(per_type.items())}


def per_type_table(result: Mapping[str, Any]) -> str:
    """Entity F per type at every setting, Δ against "off" of the same
    pipeline in brackets (points); "" when the sweep has no per-type scores."""
    rows = [r for r in result["rows"] if r.get("per_type") is not None]
    if not rows:
        return ""
    types = sorted({label for r in rows for label in r["per_type"]})
    off = {r["model"]: r["per_type"] for r in rows if is_baseline(r["setting"])}
    lines = [
        "| model | setting | " + " | ".join(types) + " |",
        "|---|---|" + "---|" * len(types),
    ]
    for row in rows:
        base = off.get(row["model"], {})
        cells = []
        for label in types:
            value = row["per_type"].get(label)
            if value is None:
                cells.append("–")
            elif is_baseline(row["setting"]) or label not in base:
                cells.append(f"{value * 100:.1f}")
            else:
                cells.append(f"{value * 100:.1f} ({(value - base[label]) * 100:+.1f})")
        lines.append(f"| {row['model']} | {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Optional[float], pattern: str) -> str:
    return pattern.format(value) if value is not None else "–"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The sweep as a markdown table (scores in points, Δ against "off" at
    full depth of the same pipeline; "E1" after the window: the entity rule,
    margin 1). A sweep with depth caps gets a "max layer" column (the cap,
    "all" without one); one without caps has the table it always had.

    A sweep with bootstrap intervals gets two more columns: the loss against
    "off" as its central interval over resamples of the dev docs ("[0.12,
    0.61]", points) and its one-sided 90% upper bound. The wall speed-up
    shows the range of its per-repetition ratios ("2.10x (1.95-2.20)")."""
    key = result["score_key"]
    off = {r["model"]: r.get("score") for r in result["rows"] if is_baseline(r["setting"])}
    capped = any((r["setting"] or {}).get("max_layer") is not None for r in result["rows"])
    intervals = any(r.get("loss") for r in result["rows"])
    cap_header = " max layer |" if capped else ""
    loss_header = f" loss {_percent((1 - INTERVAL) / 2)}-{_percent(1 - (1 - INTERVAL) / 2)} | loss ≤ (90%) |" \
        if intervals else ""
    lines = [
        f"| model | mode | threshold | window | later x |{cap_header} {key} | Δ vs off |{loss_header} mean exit layer "
        "| FLOPs speed-up | words/s | wall speed-up | wall / FLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if capped else "") + ("---|---|" if intervals else ""),
    ]
    for row in result["rows"]:
        setting, score = row["setting"] or {"exit_mode": "–"}, row.get("score")
        base = off.get(row["model"])
        delta = (score - base) * 100 if score is not None and base is not None else None
        cap_cell = f" {_max_layer(row['setting'])} |" if capped else ""
        loss_cells = _loss_cells(row.get("loss")) if intervals else ""
        lines.append(
            f"| {row['model']} | {setting['exit_mode']} | {_fmt(setting.get('threshold'), '{:g}')} "
            f"| {_fmt(setting.get('window'), '{}')}{entity_label(setting)} | {_later(setting)} "
            f"|{cap_cell} {_fmt(None if score is None else score * 100, '{:.2f}')} "
            f"| {_fmt(delta, '{:+.2f}')} |{loss_cells} {_fmt(row.get('exit_layer_mean'), '{:.2f}')} "
            f"| {_fmt(row.get('flops_speedup'), '{:.2f}x')} | {_fmt(row.get('words_per_second'), '{:.0f}')} "
            f"| {_wall(row)} | {_fmt(_ratio(row), '{:.2f}')} |"
        )
    return "\n".join(lines)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _loss_cells(loss: Optional[Mapping[str, Any]]) -> str:
    """The loss interval and 90% upper bound cells (points), "–" without."""
    if not loss:
        return " – | – |"
    bound = (loss.get("upper") or {}).get("0.9")
    return f" [{loss['low'] * 100:.2f}, {loss['high'] * 100:.2f}] | {_fmt(None if bound is None else bound * 100, '{:.2f}')} |"


def _wall(row: Mapping[str, Any]) -> str:
    """The wall speed-up cell: the median paired ratio, and the range of the
    per-repetition ratios when there are several."""
    cell = _fmt(row.get("wall_speedup"), "{:.2f}x")
    spread = row.get("wall_speedup_range")
    if row.get("wall_speedup") is not None and spread and len(row.get("wall_speedup_ratios") or ()) > 1:
        cell += f" ({spread[0]:.2f}-{spread[1]:.2f})"
    return cell


def _max_layer(setting: Optional[Mapping[str, Any]]) -> str:
    """The depth cap in a table cell: "all" (none), the layer, or "–" for a
    reference pipeline's row."""
    if setting is None:
        return "–"
    cap = setting.get("max_layer")
    return "all" if cap is None else str(cap)


def _later(setting: Mapping[str, Any]) -> str:
    """The threshold schedule in a table cell: "–" (one threshold), "4" (x4
    after layer 1), "4/16" (x4 at layer 2, x16 from 3 on) or the whole list."""
    multipliers = setting.get("threshold_multipliers")
    return schedule_label(multipliers) if multipliers else "–"


def _ratio(row: Mapping[str, Any]) -> Optional[float]:
    wall, flops = row.get("wall_speedup"), row.get("flops_speedup")
    return wall / flops if wall and flops else None


def write_results(result: Mapping[str, Any], output_stem: Union[str, Path], *, plot: bool = True) -> Dict[str, Path]:
    """Write <stem>.json, <stem>.md and, when matplotlib is installed (the
    "plot" extra) and `plot`, <stem>.png; returns the paths written (no "png"
    key without the plot)."""
    stem = Path(output_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    types = per_type_table(result)
    text = markdown_table(result) + ("\n\nEntity F per type (Δ vs off):\n\n" + types if types else "")
    paths["md"].write_text(text + "\n", encoding="utf8")
    if not plot or not plot_available():
        return paths
    from ..visualize.sweep_plot import plot_sweep

    references = [row for row in result["rows"] if row["setting"] is None]
    reference = None
    if references:  # the first reference pipeline, placed by its paired wall-clock ratio
        first = references[0]
        reference = {"name": first["name"], "score": first.get("score"), "wall_speedup": first.get("wall_speedup")}
    paths["png"] = plot_sweep(result, stem.with_suffix(".png"), reference=reference)
    return paths


def plot_available() -> bool:
    """Whether matplotlib (the "plot" extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
