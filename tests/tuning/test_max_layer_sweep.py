"""Depth caps in the sweep: the grid (--max-layers), labels, dial curves,
the table, the baseline (off at full depth), `choose` saving the cap, and a
tiny sweep through the command line."""
import json

import pytest

from spacy_earlyexit.tuning.grid import (
    build_grid, dial_series, is_baseline, parse_max_layers, setting_name,
)
from spacy_earlyexit.tuning.operating_point import baseline_score, exit_changes, pick_within_loss
from spacy_earlyexit.tuning.sweep import markdown_table, per_type_table


def test_parse_max_layers() -> None:
    assert parse_max_layers("8, 12,all,") == [8, 12, None]
    assert parse_max_layers("all") == [None]
    for bad in ("0", "-1", "x", "2.5"):
        with pytest.raises(ValueError, match="max layers"):
            parse_max_layers(bad)


def test_grid_with_caps() -> None:
    # the default is the grid without caps
    plain = build_grid(["sentence", "token"], [0.1], [0], n_layers=3)
    assert plain == build_grid(["sentence", "token"], [0.1], [0], n_layers=3, max_layers=parse_max_layers("all"))
    assert all("max_layer" not in setting for setting in plain)
    grid = build_grid(["sentence", "token"], [0.1], [0], n_layers=3, max_layers=[2, None])
    assert grid == [
        {"exit_mode": "off"},
        {"exit_mode": "off", "max_layer": 2},
        {"exit_mode": "sentence", "threshold": 0.1, "max_layer": 2},
        {"exit_mode": "sentence", "threshold": 0.1},
        {"exit_mode": "token", "threshold": 0.1, "window": 0, "max_layer": 2},
        {"exit_mode": "token", "threshold": 0.1, "window": 0},
    ]
    assert [setting_name(s) for s in grid] == [
        "off", "off ≤L2", "sentence t=0.1 ≤L2", "sentence t=0.1", "token t=0.1 k=0 ≤L2", "token t=0.1 k=0",
    ]
    # a cap alone: the full-depth baseline stays
    assert build_grid(["token"], [0.1], [0], max_layers=[2])[:2] == [
        {"exit_mode": "off"}, {"exit_mode": "off", "max_layer": 2},
    ]
    with pytest.raises(ValueError, match="max_layer 4 .* 3 layers"):
        build_grid(["token"], [0.1], [0], n_layers=3, max_layers=[4])
    multipliers = build_grid(["token"], [0.1], [0], later_factors=[4.0], n_layers=3, max_layers=[2])
    assert setting_name(multipliers[-1]) == "token t=0.1 k=0 m=4 ≤L2"
    assert is_baseline({"exit_mode": "off"}) and is_baseline({"exit_mode": "off", "max_layer": None})
    assert not is_baseline({"exit_mode": "off", "max_layer": 2}) and not is_baseline(None)


def row(setting, score, flops, wall=None, per_type=None):
    return {"model": "m", "name": setting_name(setting), "setting": setting, "score": score,
            "flops_speedup": flops, "wall_speedup": wall or flops, "exit_layer_mean": 1.0,
            "words_per_second": 100.0 * (wall or flops), "per_type": per_type}


# the cut network listed before the full one, and scoring better than it
ROWS = [
    row({"exit_mode": "off", "max_layer": 2}, 0.60, 2.0, per_type={"LOC": 0.7}),
    row({"exit_mode": "off", "max_layer": None}, 0.50, 1.0, per_type={"LOC": 0.5}),
    row({"exit_mode": "token", "threshold": 0.1, "window": 0, "max_layer": 2}, 0.58, 3.0, per_type={"LOC": 0.6}),
    row({"exit_mode": "token", "threshold": 0.1, "window": 0, "max_layer": None}, 0.49, 1.5,
        per_type={"LOC": 0.4}),
]


def test_baseline_is_off_at_full_depth() -> None:
    assert baseline_score(ROWS) == 0.50
    assert pick_within_loss(ROWS, 0.0)["setting"] == {"exit_mode": "token", "threshold": 0.1, "window": 0,
                                                      "max_layer": 2}
    table = markdown_table({"score_key": "ents_f", "rows": ROWS})
    assert "| max layer |" in table.splitlines()[0]
    lines = table.splitlines()[2:]
    assert lines[0].startswith("| m | off | – | – | – | 2 | 60.00 | +10.00 |")
    assert lines[1].startswith("| m | off | – | – | – | all | 50.00 | +0.00 |")
    # without caps: the table as it always was
    uncapped = markdown_table({"score_key": "ents_f", "rows": [r for r in ROWS if r["setting"]["max_layer"] is None]})
    assert uncapped.splitlines()[0].startswith("| model | mode | threshold | window | later x | ents_f |")
    assert uncapped.splitlines()[2].startswith("| m | off | – | – | – | 50.00 | +0.00 |")
    types = per_type_table({"rows": ROWS})
    assert "| m | off ≤L2 | 70.0 (+20.0) |" in types and "| m | off | 50.0 |" in types


def test_dial_curves_per_cap() -> None:
    series = dial_series(ROWS)
    assert list(series) == ["token k=0 ≤L2", "token k=0"]
    assert [r["name"] for r in series["token k=0 ≤L2"]] == ["off ≤L2", "token t=0.1 k=0 ≤L2"]
    assert [r["name"] for r in series["token k=0"]] == ["off", "token t=0.1 k=0"]
    # a cap without other settings is drawn alone
    assert list(dial_series(ROWS[:2] + ROWS[3:])) == ["token k=0", "off ≤L2"]


def test_exit_changes_carry_the_cap() -> None:
    assert exit_changes(ROWS[0]) == {"exit_mode": "off", "max_layer": 2}
    # a row without the key (an older sweep) ran at full depth: a saved cap is lifted
    assert exit_changes({"setting": {"exit_mode": "token", "threshold": 0.2}}) == {
        "exit_mode": "token", "threshold": 0.2, "max_layer": None,
    }


def test_sweep_and_choose_with_caps(tiny_bert, tmp_path, capsys) -> None:
    """python -m spacy_earlyexit sweep --max-layers 1,all on a tiny POS
    pipeline, then choose: rows record max_layer, the cut network's row
    runs 1 of 3 layers, and choose saves the cap."""
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    from helpers.tiny_bert import POS_DATA, train_tiny_pipeline
    from spacy_earlyexit.cli import main

    nlp = train_tiny_pipeline(tiny_bert, "pos", 3)
    nlp.to_disk(tmp_path / "pipeline")
    gold = [Example.from_dict(nlp.make_doc(text), {"pos": tags}).reference for text, tags in POS_DATA]
    DocBin(docs=gold * 2).to_disk(tmp_path / "dev.spacy")
    main(["sweep", "--pipeline", f"m={tmp_path / 'pipeline'}", "--dev", str(tmp_path / "dev.spacy"),
          "--output", str(tmp_path / "sweep"), "--exit-modes", "token", "--thresholds", "0.3", "--windows", "0",
          "--max-layers", "1,all", "--repetitions", "1", "--batch-size", "4", "--no-progress"])
    result = json.loads((tmp_path / "sweep.json").read_text())
    settings = [r["setting"] for r in result["rows"]]
    assert [s["max_layer"] for s in settings] == [None, 1, 1, None]
    assert [r["name"] for r in result["rows"]] == ["off", "off ≤L1", "token t=0.3 k=0 ≤L1", "token t=0.3 k=0"]
    off, cut = result["rows"][:2]
    assert off["wall_speedup"] == 1.0  # the baseline is the full network
    assert cut["exit_layer_mean"] == 1.0 and cut["flops_speedup"] == pytest.approx(3.0)
    assert "| m | off | – | – | – | 1 | " in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    main(["choose", str(tmp_path / "sweep.json"), "--source", str(tmp_path / "pipeline"),
          "--output", str(tmp_path / "chosen"), "--target-speedup", "2.5"])
    assert "'max_layer': 1" in capsys.readouterr().out
    chosen = spacy.load(tmp_path / "chosen").get_pipe("earlyexit_tagger").exit_settings
    assert chosen.max_layer == 1
    assert spacy.load(tmp_path / "chosen")(POS_DATA[0][0])._.exit_layers == [1] * 5
