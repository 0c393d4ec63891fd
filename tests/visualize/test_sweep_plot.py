"""The sweep plot: the Pareto frontier on hand-built rows, and a PNG of a
small synthetic sweep with two pipelines, a reference and a chosen point."""
import pytest

from spacy_earlyexit.visualize import pareto_front, plot_sweep
from spacy_earlyexit.visualize.sweep_plot import chosen_rows, reference_speedup, speed_key_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(model, name, score, wall, flops, wps=None, setting=None):
    if setting is None:
        mode, _, threshold = name.partition(" t=")
        setting = {"exit_mode": mode} if mode == "off" else {"exit_mode": mode, "threshold": float(threshold), "window": 0}
        if mode == "token":
            name = f"{name} k=0"
    return {"model": model, "name": name, "setting": setting, "score": score, "wall_speedup": wall,
            "flops_speedup": flops, "words_per_second": wps}


def sweep():
    rows = [
        row("a", "off", 0.960, 1.0, 1.0, wps=1000),
        row("a", "token t=0.1", 0.958, 1.8, 2.0),   # front
        row("a", "token t=0.2", 0.950, 1.7, 2.5),   # dominated in wall by t=0.1 (slower, worse); not in FLOPs
        row("a", "token t=0.3", 0.940, 3.0, 3.2),   # front
        row("a", "sentence t=0.2", 0.958, 1.5, 1.6),  # same score as t=0.1, slower: dominated
        row("b", "off", 0.955, 1.0, 1.0, wps=1200),
        row("b", "token t=0.1", 0.956, 2.0, 2.1),   # beats b's off: off is dominated
        row("b", "token t=0.2", 0.945, 2.5, 2.6),   # front (b's front is not a's)
        row("b", "token t=0.3", None, 3.0, 3.0),    # no score: left out
    ]
    return {"score_key": "pos_acc", "n_docs": 10, "rows": rows}


def names(rows):
    return [(r["model"], r["name"]) for r in rows]


def test_pareto_front_per_pipeline():
    rows = sweep()["rows"]
    assert names(pareto_front(rows, "wall_speedup")) == [
        ("a", "off"), ("a", "token t=0.1 k=0"), ("a", "token t=0.3 k=0"),
        ("b", "token t=0.1 k=0"), ("b", "token t=0.2 k=0"),
    ]
    assert names(pareto_front(rows, "flops_speedup")) == [
        ("a", "off"), ("a", "token t=0.1 k=0"), ("a", "token t=0.2 k=0"), ("a", "token t=0.3 k=0"),
        ("b", "token t=0.1 k=0"), ("b", "token t=0.2 k=0"),
    ]


def test_pareto_front_ties_and_fallback():
    twins = [row("a", "off", 0.9, 1.0, 1.0), row("a", "token t=0.1", 0.9, 1.0, 1.0)]
    assert len(pareto_front(twins, "wall_speedup")) == 2  # equal rows do not dominate each other
    no_wall = [row("a", "off", 0.96, None, 1.0), row("a", "token t=0.1", 0.95, None, 2.0),
               row("a", "token t=0.2", 0.94, None, 1.5)]
    assert speed_key_of(no_wall) == "flops_speedup"
    assert names(pareto_front(no_wall)) == [("a", "off"), ("a", "token t=0.1 k=0")]
    assert speed_key_of(sweep()["rows"]) == "wall_speedup"


def test_reference_and_chosen_lookup():
    rows = sweep()["rows"]
    assert reference_speedup({"words_per_second": 2200}, rows) == pytest.approx(2.0)  # mean of off: 1100
    assert reference_speedup({"wall_speedup": 0.5}, rows) == 0.5
    assert reference_speedup({"score": 0.9}, rows) is None
    assert names(chosen_rows(rows, "token t=0.2 k=0")) == [("a", "token t=0.2 k=0"), ("b", "token t=0.2 k=0")]
    assert names(chosen_rows(rows, rows[7])) == [("b", "token t=0.2 k=0")]
    with pytest.raises(ValueError, match="not in the sweep"):
        chosen_rows(rows, "token t=0.9 k=0")


def test_plot_writes_a_png(tmp_path):
    result = sweep()
    path = plot_sweep(result, tmp_path / "plots" / "sweep.png", chosen=result["rows"][3],
                      reference={"name": "en_core_web_sm", "score": 0.95, "words_per_second": 4000})
    assert path == tmp_path / "plots" / "sweep.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    # without wall-clock times: one panel, the reference cannot be placed and is left out
    for r in result["rows"]:
        r["wall_speedup"] = None
    speed_only = plot_sweep(result, tmp_path / "flops.png", chosen="token t=0.1 k=0",
                            reference={"name": "other", "words_per_second": 500})
    assert speed_only.read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_the_plot_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "spacy-earlyexit\[plot\]"'):
        plot_sweep(sweep(), tmp_path / "sweep.png")
    assert not (tmp_path / "sweep.png").exists()
