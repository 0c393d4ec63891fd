"""The speed/accuracy sweep: exit mode x threshold x window on a dev set.

For every trained pipeline given (e.g. stage 1 and stage 2) and every setting
of the grid: the task's headline score, mean exit layer, analytic FLOPs
speed-up, measured words/s of nlp.pipe and the wall-clock speed-up over the
same pipeline with exit mode "off". All settings run in one process,
interleaved (each repetition runs every setting once, in alternating order),
and the timings are medians over the repetitions. Results are written as
JSON, a markdown table and a PNG plot of score against speed-up.
"""
import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from tqdm import tqdm

from ..model import EXIT_MODES

COMPONENT = "earlyexit_tagger"


LaterFactor = Union[float, Tuple[float, float]]


def parse_later_factors(text: str) -> List[LaterFactor]:
    """"1,4,4/16" -> [1.0, 4.0, (4.0, 16.0)] (see build_grid)."""
    factors: List[LaterFactor] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        second, _, third = item.partition("/")
        try:
            factors.append((float(second), float(third)) if third else float(second))
        except ValueError:
            raise ValueError(f"later-layer factors are numbers f or pairs a/b; got {item!r}") from None
    return factors


def build_grid(
    modes: Sequence[str],
    thresholds: Sequence[float],
    windows: Sequence[int],
    later_factors: Sequence[LaterFactor] = (1.0,),
    n_layers: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """The settings of a sweep: "off" first, then each mode x threshold
    (x window, for token mode only) x later-layer factor.

    later_factors: a factor f other than 1 gives the schedule
        threshold_multipliers = [1, f, ..., f] (the threshold at layers 2 and
        up is f times the first layer's; a first off-ramp that is less
        reliable than the rest then exits only its surest tokens); a pair
        (a, b) gives [1, a, b, ..., b] (layer 2 at a times, layers 3 and up at
        b times the first layer's threshold, for encoders whose off-ramps
        from layer 3 on are as good as the last). Needs n_layers, the
        encoder's depth (>= 3 for a pair).
    """
    unknown = sorted(set(modes) - set(EXIT_MODES))
    if unknown:
        raise ValueError(f"unknown exit mode(s) {', '.join(unknown)}; known: {', '.join(EXIT_MODES)}")
    schedules: List[Optional[List[float]]] = []
    for factor in later_factors:
        second, third = factor if isinstance(factor, tuple) else (factor, factor)
        if float(second) == 1.0 and float(third) == 1.0:
            schedules.append(None)
            continue
        needed = 2 if second == third else 3
        if n_layers is None or n_layers < needed:
            raise ValueError(
                f"later-layer factor {schedule_label([1.0, float(second), float(third)])} needs the "
                f"encoder's number of layers (>= {needed})"
            )
        schedules.append([1.0, float(second)] + [float(third)] * (n_layers - 2))
    grid: List[Dict[str, Any]] = [{"exit_mode": "off"}]
    for mode in modes:
        for threshold in thresholds:
            bases: List[Dict[str, Any]] = []
            if mode == "sentence":
                bases.append({"exit_mode": "sentence", "threshold": float(threshold)})
            elif mode == "token":
                bases.extend(
                    {"exit_mode": "token", "threshold": float(threshold), "window": int(window)}
                    for window in windows
                )
            for base in bases:
                for schedule in schedules:
                    grid.append(base if schedule is None else {**base, "threshold_multipliers": schedule})
    return grid


def schedule_label(multipliers: Sequence[float]) -> str:
    """"4" for [1, 4, 4, ...], "4/16" for [1, 4, 16, 16, ...], else the list."""
    if multipliers and multipliers[0] == 1.0 and len(multipliers) >= 2:
        rest = set(multipliers[2:])
        if not rest or rest == {multipliers[1]}:
            return f"{multipliers[1]:g}"
        if len(rest) == 1:
            return f"{multipliers[1]:g}/{rest.pop():g}"
    return ",".join(f"{m:g}" for m in multipliers)


def setting_name(setting: Mapping[str, Any]) -> str:
    """A short label such as "token t=0.2 k=1" (" m=4": threshold x4 after
    layer 1; " m=4/16": x4 at layer 2, x16 from layer 3 on).

    A setting that leaves out a value (the pipeline's own is used) leaves it
    out of the label too."""
    mode = setting.get("exit_mode")
    if mode == "off":
        return "off"
    name = mode if mode is not None else "current"
    if "threshold" in setting:
        name += f" t={setting['threshold']:g}"
    if mode == "token" and "window" in setting:
        name += f" k={setting['window']}"
    multipliers = setting.get("threshold_multipliers")
    if multipliers:
        name += f" m={schedule_label(multipliers)}"
    return name


def _fresh_docs(nlp: Language, gold_docs: Sequence[Doc]) -> List[Doc]:
    """Unannotated docs with the gold tokenization (for a task that makes its
    own tokens, e.g. segment: the pipeline's tokenization of the text)."""
    if nlp.get_pipe(COMPONENT).task.retokenizes:
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
    if len(base_seconds) != len(seconds):
        raise ValueError(f"{len(base_seconds)} baseline timings against {len(seconds)}")
    ratios = [base / own for base, own in zip(base_seconds, seconds) if own > 0]
    return statistics.median(ratios) if ratios else None


def doc_slices(n_docs: int, slice_docs: int) -> List[slice]:
    """Consecutive slices of at most slice_docs docs that cover n_docs."""
    if slice_docs < 1:
        raise ValueError(f"slice_docs must be >= 1; got {slice_docs}")
    return [slice(start, min(start + slice_docs, n_docs)) for start in range(0, n_docs, slice_docs)]


def _time_pipe(nlp: Language, docs: List[Doc], batch_size: int, setting: Mapping[str, Any]):
    start = time.perf_counter()
    annotated = list(nlp.pipe(docs, batch_size=batch_size, component_cfg={COMPONENT: dict(setting)}))
    return time.perf_counter() - start, annotated


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
) -> Dict[str, Any]:
    """Score and time every setting of `grid` on every pipeline.

    pipelines: name (e.g. "stage1") -> pipeline folder or loaded Language,
        each with an earlyexit_tagger.
    dev_path: .spacy file with gold annotation; limit: use only its first N
        docs (0: all).
    grid: settings as accepted by configure_exit (see build_grid); one of
        them should be {"exit_mode": "off"}, the wall-clock baseline.
    slice_docs: interleave the settings on slices of this many docs (0: one
        nlp.pipe batch, batch_size docs): each repetition times every
        setting on the first slice, then every setting on the next, and so
        on, so that all settings see the machine in the same state.
    Returns a JSON-friendly dict; its "rows" hold, per pipeline and setting:
    model, name, setting, score, exit_layer_mean, flops_speedup, seconds
    (per repetition), words_per_second and wall_speedup.
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1; got {repetitions}")
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
    first = next(iter(gold.values()))
    n_words = sum(len(doc) for doc in first)
    if not n_words:
        raise ValueError(f"{dev_path} has no words")

    rows: List[Dict[str, Any]] = []
    for model_name in loaded:
        for setting in grid:
            rows.append({"model": model_name, "name": setting_name(setting), "setting": dict(setting), "seconds": []})
    for model_name, nlp in loaded.items():  # warm-up
        _time_pipe(nlp, _fresh_docs(nlp, gold[model_name][:64]), batch_size, {"exit_mode": "off"})
    parts = doc_slices(len(first), slice_docs or batch_size)
    bar = tqdm(total=repetitions * len(rows) * len(parts), desc="sweep", unit="run", disable=not progress)
    for repetition in range(repetitions):
        order = rows if repetition % 2 == 0 else rows[::-1]
        annotated: Dict[int, List[Doc]] = {id(row): [] for row in rows if "score" not in row}
        for row in order:
            row["seconds"].append(0.0)
        for part in parts:
            for row in order:
                bar.set_postfix_str(f"{row['model']} {row['name']}")
                nlp = loaded[row["model"]]
                seconds, docs = _time_pipe(nlp, _fresh_docs(nlp, gold[row["model"]][part]), batch_size, row["setting"])
                row["seconds"][-1] += seconds
                if id(row) in annotated:
                    annotated[id(row)].extend(docs)
                bar.update(1)
        for row in rows:
            if id(row) in annotated:
                examples = [Example(doc, ref) for doc, ref in zip(annotated[id(row)], gold[row["model"]])]
                scores = loaded[row["model"]].get_pipe(COMPONENT).score(examples)
                row["score"] = scores.get(score_key)
                row["exit_layer_mean"] = scores.get("exit_layer_mean")
                row["flops_speedup"] = scores.get("flops_speedup")
    bar.close()
    base = {row["model"]: row["seconds"] for row in rows if row["setting"]["exit_mode"] == "off"}
    for row in rows:
        median = statistics.median(row["seconds"])
        row["words_per_second"] = n_words / median if median > 0 else None
        row["wall_speedup"] = paired_speedup(base[row["model"]], row["seconds"]) if row["model"] in base else None
    return {
        "dev": str(dev_path),
        "n_docs": len(first),
        "n_words": n_words,
        "repetitions": repetitions,
        "batch_size": batch_size,
        "slice_docs": slice_docs or batch_size,
        "torch_threads": torch.get_num_threads(),
        "score_key": score_key,
        "models": {name: str(p) if not isinstance(p, Language) else name for name, p in pipelines.items()},
        "rows": rows,
    }


def _fmt(value: Optional[float], pattern: str) -> str:
    return pattern.format(value) if value is not None else "–"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The sweep as a markdown table (scores in points, Δ against "off" of
    the same pipeline)."""
    key = result["score_key"]
    off = {r["model"]: r.get("score") for r in result["rows"] if r["setting"]["exit_mode"] == "off"}
    lines = [
        f"| model | mode | threshold | window | later x | {key} | Δ vs off | mean exit layer "
        "| FLOPs speed-up | words/s | wall speed-up | wall / FLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        setting, score = row["setting"], row.get("score")
        base = off.get(row["model"])
        delta = (score - base) * 100 if score is not None and base is not None else None
        lines.append(
            f"| {row['model']} | {setting['exit_mode']} | {_fmt(setting.get('threshold'), '{:g}')} "
            f"| {_fmt(setting.get('window'), '{}')} | {_later(setting)} "
            f"| {_fmt(None if score is None else score * 100, '{:.2f}')} "
            f"| {_fmt(delta, '{:+.2f}')} | {_fmt(row.get('exit_layer_mean'), '{:.2f}')} "
            f"| {_fmt(row.get('flops_speedup'), '{:.2f}x')} | {_fmt(row.get('words_per_second'), '{:.0f}')} "
            f"| {_fmt(row.get('wall_speedup'), '{:.2f}x')} | {_fmt(_ratio(row), '{:.2f}')} |"
        )
    return "\n".join(lines)


def _later(setting: Mapping[str, Any]) -> str:
    """The threshold schedule in a table cell: "–" (one threshold), "4" (x4
    after layer 1), "4/16" (x4 at layer 2, x16 from 3 on) or the whole list."""
    multipliers = setting.get("threshold_multipliers")
    return schedule_label(multipliers) if multipliers else "–"


def _ratio(row: Mapping[str, Any]) -> Optional[float]:
    wall, flops = row.get("wall_speedup"), row.get("flops_speedup")
    return wall / flops if wall and flops else None


def _series(rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
    """Rows grouped into dial curves: one per exit mode (and window, in token
    mode), each starting at the "off" row and ordered by threshold."""
    off = [r for r in rows if r["setting"]["exit_mode"] == "off"]
    series: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        setting = row["setting"]
        if setting["exit_mode"] == "off":
            continue
        label = setting["exit_mode"]
        if setting["exit_mode"] == "token":
            label += f" k={setting['window']}"
        multipliers = setting.get("threshold_multipliers")
        if multipliers:  # a threshold schedule is a curve of its own
            label = setting_name({**setting, "threshold": 0.0}).replace(" t=0", "")
        series.setdefault(label, list(off)).append(row)
    for label, members in series.items():
        members.sort(key=lambda r: r["setting"].get("threshold", 0.0))
    return series


def plot(result: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """PNG: score against FLOPs speed-up (left) and measured wall-clock
    speed-up (right). One curve per exit mode (per window in token mode),
    following the threshold from "off" upwards; one line style per pipeline
    (e.g. stage 1 dashed, stage 2 solid when listed in that order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("score") is not None]
    models = list(dict.fromkeys(r["model"] for r in rows))
    styles = ["--", "-", ":", "-."]
    labels = list(dict.fromkeys(label for m in models for label in _series([r for r in rows if r["model"] == m])))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, speed_key, title in (
        (axes[0], "flops_speedup", "FLOPs speed-up (analytic)"),
        (axes[1], "wall_speedup", "wall-clock speed-up (measured)"),
    ):
        for model_index, model_name in enumerate(models):
            model_rows = [r for r in rows if r["model"] == model_name and r.get(speed_key) is not None]
            for label, members in _series(model_rows).items():
                axis.plot(
                    [r[speed_key] for r in members], [r["score"] * 100 for r in members],
                    styles[model_index % len(styles)], marker="o", markersize=3,
                    color=colours[label], label=f"{model_name} {label}",
                )
        axis.set_xlabel(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"{result['score_key']} (dev, points)")
    axes[0].legend(fontsize=7)
    figure.suptitle(f"early exit: {result['score_key']} against speed-up ({result['n_docs']} dev docs)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_results(result: Mapping[str, Any], output_stem: Union[str, Path]) -> Dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>.png; returns the paths."""
    stem = Path(output_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    paths["md"].write_text(markdown_table(result) + "\n", encoding="utf8")
    plot(result, paths["png"])
    return paths
