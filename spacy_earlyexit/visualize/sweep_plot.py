"""The sweep as a picture: score against speed-up, one colour per pipeline,
one marker and line style per dial curve (exit mode, window, threshold
schedule, depth cap: "≤L8"), the bootstrap interval of each setting's loss as an error bar,
the Pareto frontier of every pipeline, the chosen operating point
and another pipeline for reference.

    from spacy_earlyexit.visualize import plot_sweep
    plot_sweep(result, "sweep.png", chosen="token t=0.04 k=0 m=4/16",
               reference={"name": "en_core_web_sm", "score": 0.95, "words_per_second": 10000})

`result` is what tuning.sweep.run_sweep returns (and its JSON file holds).
matplotlib (the "plot" extra) is imported only when plot_sweep is called.
"""
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from ..tuning.grid import dial_series, is_baseline

Row = Mapping[str, Any]
SPEED_KEYS = ("wall_speedup", "flops_speedup")
AXIS_TITLES = {
    "wall_speedup": "wall-clock speed-up over exit mode off (measured)",
    "flops_speedup": "FLOPs speed-up over exit mode off (analytic)",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINE_STYLES = ("-", "--", ":", "-.")
CHOSEN_COLOUR = "#d62728"


PLOT_INSTALL = 'pip install "spacy-earlyexit[plot]"'


def require_matplotlib():
    """The matplotlib module; ImportError saying how to install it (the
    "plot" extra) when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"the sweep plot needs matplotlib: {PLOT_INSTALL}") from None
    return matplotlib


def speed_key_of(rows: Sequence[Row]) -> str:
    """"wall_speedup" when every scored row has it, else "flops_speedup"."""
    scored = [row for row in rows if row.get("score") is not None]
    if scored and all(row.get("wall_speedup") is not None for row in scored):
        return "wall_speedup"
    return "flops_speedup"


def pareto_front(rows: Sequence[Row], speed_key: Optional[str] = None) -> List[Row]:
    """The rows no other row of the same pipeline ("model") beats: none has
    a score and a speed-up both at least as high, one of them higher.

    speed_key: "wall_speedup" or "flops_speedup"; default: per pipeline,
        wall-clock when all its rows have it, else FLOPs (speed_key_of).
    Rows without a score or speed-up are left out. Returns the frontier rows
    in the order of `rows`.
    """
    front: List[Row] = []
    for model in dict.fromkeys(row["model"] for row in rows):
        members = [row for row in rows if row["model"] == model]
        key = speed_key or speed_key_of(members)
        members = [row for row in members if row.get("score") is not None and row.get(key) is not None]
        for row in members:
            if not any(
                other["score"] >= row["score"] and other[key] >= row[key]
                and (other["score"] > row["score"] or other[key] > row[key])
                for other in members
            ):
                front.append(row)
    return [row for row in rows if any(row is kept for kept in front)]


def reference_speedup(reference: Mapping[str, Any], rows: Sequence[Row]) -> Optional[float]:
    """Where a reference pipeline sits on the wall-clock axis: its
    "wall_speedup" if given, else its "words_per_second" over the mean
    words/s of the sweep's exit-mode-off rows at full depth (None when
    neither is known)."""
    if reference.get("wall_speedup") is not None:
        return float(reference["wall_speedup"])
    off = [row["words_per_second"] for row in rows
           if is_baseline(row["setting"]) and row.get("words_per_second")]
    if reference.get("words_per_second") is None or not off:
        return None
    return float(reference["words_per_second"]) / (sum(off) / len(off))


def chosen_rows(rows: Sequence[Row], chosen: Union[None, str, Row]) -> List[Row]:
    """The rows of the chosen operating point: a row (matched by model and
    name) or a setting name (e.g. "token t=0.05 k=0 m=4/16": that setting in
    every pipeline). ValueError when nothing matches."""
    if chosen is None:
        return []
    name = chosen if isinstance(chosen, str) else chosen["name"]
    model = None if isinstance(chosen, str) else chosen.get("model")
    found = [row for row in rows if row["name"] == name and model in (None, row["model"])]
    if not found:
        raise ValueError(f"chosen setting {name!r}{f' of {model}' if model else ''} is not in the sweep")
    return found


def _of(rows: Sequence[Row], model: str) -> List[Row]:
    return [row for row in rows if row["model"] == model]


def _draw_model(axis, rows: Sequence[Row], key: str, colour, styles: Mapping[str, Any]) -> None:
    """One pipeline's dial curves, and its Pareto frontier as a broad band
    with rings on its rows."""
    for label, members in dial_series(rows).items():
        marker, line = styles[label]
        _points(axis, members, key, linestyle=line, marker=marker, markersize=4.5, linewidth=1.1,
                color=colour, alpha=0.75)
    _draw_intervals(axis, rows, key, colour)
    front = sorted(pareto_front(rows, key), key=lambda row: row[key])
    _points(axis, front, key, linewidth=6, color=colour, alpha=0.2, solid_capstyle="round", zorder=1)
    _points(axis, front, key, linestyle="none", marker="o", markersize=10, markerfacecolor="none",
            markeredgecolor=colour, markeredgewidth=1.6, zorder=3)


def loss_error_bars(row: Row) -> Optional[Tuple[float, float]]:
    """(below, above) in points: the row's score interval from its bootstrap
    loss interval against "off" (the setting scores off - loss, so the
    interval [low, high] of the loss puts its score between point - (high -
    point loss) and point + (point loss - low)); None without a loss record."""
    loss = row.get("loss")
    if not loss or row.get("score") is None:
        return None
    return max(0.0, loss["high"] - loss["point"]) * 100, max(0.0, loss["point"] - loss["low"]) * 100


def _draw_intervals(axis, rows: Sequence[Row], key: str, colour) -> None:
    """Error bars: each setting's bootstrap interval of its loss against "off"."""
    bars: List[Tuple[Row, Tuple[float, float]]] = []
    for row in rows:
        bar = loss_error_bars(row)
        if bar is not None and row.get(key) is not None and not is_baseline(row["setting"]):
            bars.append((row, bar))
    if not bars:
        return
    axis.errorbar([row[key] for row, _ in bars], [row["score"] * 100 for row, _ in bars],
                  yerr=[[bar[0] for _, bar in bars], [bar[1] for _, bar in bars]], fmt="none",
                  ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.45, zorder=2)


def _draw_chosen(axis, row: Row, key: str) -> None:
    _points(axis, [row], key, linestyle="none", marker="*", markersize=20, color=CHOSEN_COLOUR,
            markeredgecolor="black", markeredgewidth=0.8, zorder=5)
    axis.annotate(f"chosen: {row['model']} {row['name']}", (row[key], row["score"] * 100),
                  xytext=(-12, -22), textcoords="offset points", fontsize=8, color="#a01d1d", ha="right",
                  bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})


def _legends(first_axis, last_axis, colours: Mapping[str, Any], styles: Mapping[str, Any], chosen: bool,
             reference: Optional[Mapping[str, Any]], rows: Sequence[Row]) -> None:
    """Pipelines (colours) and marks in the first panel, dial curves
    (marker and line style) in the last."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour, linewidth=3, label=model) for model, colour in colours.items()]
    handles.append(Line2D([], [], color="#888", linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                          markeredgewidth=1.6, label="Pareto frontier (per pipeline)"))
    if chosen:
        handles.append(Line2D([], [], color=CHOSEN_COLOUR, linestyle="none", marker="*", markersize=14,
                              markeredgecolor="black", label="chosen"))
    if reference is not None and reference_speedup(reference, rows) is not None:
        scored = reference.get("score") is not None
        name = str(reference.get("name", "reference")) + ("" if scored else " (speed only)")
        handles.append(Line2D([], [], color="black", linestyle="none" if scored else "--",
                              marker="D" if scored else None, label=name))
    pipelines = first_axis.legend(handles=handles, title="pipeline", loc="lower left", fontsize=8, title_fontsize=8)
    first_axis.add_artist(pipelines)  # the next legend() would replace it in a single panel
    curves = [Line2D([], [], color="#444", marker=marker, linestyle=line, label=label)
              for label, (marker, line) in styles.items()]
    last_axis.legend(handles=curves, title="exit rule (each curve: threshold rising)", fontsize=8, title_fontsize=8,
                     loc="lower left" if last_axis is not first_axis else "lower center")


def _draw_reference(axis, reference: Mapping[str, Any], rows: Sequence[Row]) -> None:
    """The reference pipeline: a point, or a vertical line when only its speed is known."""
    speedup = reference_speedup(reference, rows)
    if speedup is None:
        return
    name = str(reference.get("name", "reference"))
    if reference.get("score") is None:
        axis.axvline(speedup, color="black", linestyle="--", linewidth=1, zorder=2)
        axis.annotate(name, (speedup, 0.5), xycoords=("data", "axes fraction"), xytext=(4, 0),
                      textcoords="offset points", fontsize=8, rotation=90, va="center")
        return
    score = float(reference["score"]) * 100
    axis.plot([speedup], [score], linestyle="none", marker="D", markersize=9, color="black", zorder=5)
    axis.annotate(name, (speedup, score), xytext=(8, 6), textcoords="offset points", fontsize=9)


def _points(axis, members: Sequence[Row], key: str, **style: Any) -> None:
    axis.plot([row[key] for row in members], [row["score"] * 100 for row in members], **style)


def plot_sweep(
    result: Mapping[str, Any],
    path: Union[str, Path],
    *,
    reference: Optional[Mapping[str, Any]] = None,
    chosen: Union[None, str, Row] = None,
) -> Path:
    """PNG of a sweep: score (points) against wall-clock speed-up (left) and
    FLOPs speed-up (right; left only when no row has a wall-clock time).

    result: run_sweep's dict ("rows", "score_key", "n_docs").
    reference: another pipeline, {"name", "score" (0-1), and "words_per_second"
        (placed relative to the mean words/s of exit mode off) or
        "wall_speedup"}; drawn on the wall-clock panel.
    chosen: the operating point, a row or a setting name (see chosen_rows).
    Returns the path written.
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the dial's rows; reference pipelines (setting None) come as `reference`
    rows = [row for row in result["rows"] if row.get("score") is not None and row.get("setting") is not None]
    keys = [key for key in SPEED_KEYS if any(row.get(key) is not None for row in rows)]
    if not keys:
        raise ValueError("the sweep has no scored rows with a speed-up to plot")
    models = list(dict.fromkeys(row["model"] for row in rows))
    colours = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(models)}
    curves = list(dict.fromkeys(label for model in models for label in dial_series(_of(rows, model))))
    styles = {label: (MARKERS[i % len(MARKERS)], LINE_STYLES[i % len(LINE_STYLES)]) for i, label in enumerate(curves)}
    picked = chosen_rows(rows, chosen)
    figure, axes = plt.subplots(1, len(keys), figsize=(7.2 * len(keys), 6.2), sharey=True, squeeze=False)
    for axis, key in zip(axes[0], keys):
        for model in models:
            model_rows = [row for row in _of(rows, model) if row.get(key) is not None]
            _draw_model(axis, model_rows, key, colours[model], styles)
        for row in picked:
            if row.get(key) is not None:
                _draw_chosen(axis, row, key)
        if reference is not None and key == "wall_speedup":
            _draw_reference(axis, reference, rows)
        axis.set_xlabel(AXIS_TITLES[key])
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{result['score_key']} (dev, points)")
    placed_reference = reference if "wall_speedup" in keys and reference is not None else None
    _legends(axes[0][0], axes[0][-1], colours, styles, bool(picked), placed_reference, rows)
    figure.suptitle(f"early exit: {result['score_key']} against speed-up ({result.get('n_docs', '?')} dev docs)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
