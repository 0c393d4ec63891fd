"""The command line (`spacy-earlyexit` / `python -m spacy_earlyexit`): help
texts with defaults, one-line errors for user mistakes (exit status 1, no
traceback), nothing overwritten unless asked, `sweep` without matplotlib and
with a grid a pipeline cannot run."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import typer

from helpers.tiny_bert import POS_DATA, train_tiny_pipeline
from spacy_earlyexit.cli import main
from spacy_earlyexit.cli._util import app

COMMANDS = ("sweep", "choose", "evaluate", "annotate", "render", "jemalloc-path", "quantize")
ROOT = Path(__file__).resolve().parents[2]


def run(argv: List[str]) -> Tuple[int, str]:
    """(exit status, stderr line) of a command run in this process, as the
    interpreter would end it: a SystemExit with a message is status 1 and
    the message on stderr. Any other exception (a traceback) propagates."""
    try:
        main(argv)
    except SystemExit as exit:
        if isinstance(exit.code, str):
            return 1, exit.code
        return exit.code or 0, ""
    return 0, ""


def assert_one_line_error(argv: List[str], *expected: str) -> str:
    status, message = run(argv)
    assert status == 1, (argv, status, message)
    assert message.startswith("error: ") and "\n" not in message, message
    for part in expected:
        assert part in message, (part, message)
    return message


def folder_digest(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pos_pipeline(tiny_bert, tmp_path_factory) -> Path:
    """A tiny initialized POS pipeline (3 layers), saved."""
    folder = tmp_path_factory.mktemp("cli") / "pos"
    train_tiny_pipeline(tiny_bert, "pos", 0).to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def dev_file(pos_pipeline) -> Path:
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    nlp = spacy.blank("en")
    gold = [Example.from_dict(nlp.make_doc(text), {"pos": tags}).reference for text, tags in POS_DATA]
    path = pos_pipeline.parent / "dev.spacy"
    DocBin(docs=gold).to_disk(path)
    return path


# --- help -------------------------------------------------------------------
def test_top_level_help_lists_each_command_once(capsys):
    assert run(["--help"]) == (0, "")
    text = capsys.readouterr().out
    listed = text.split("Commands:")[1].split()
    for name in COMMANDS:
        assert listed.count(name) == 1, (name, text)
    assert "module" not in text.lower()
    # one line each: the name, then its description
    lines = [line for line in text.split("Commands:")[1].splitlines() if line.strip()]
    assert len(lines) == len(COMMANDS)


def test_every_option_has_help_and_shows_its_default():
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        for param in sub.params:
            if param.name == "help":
                continue
            assert param.help, (name, param.name)
            if getattr(param, "is_flag", False) or param.required:
                continue
            assert param.show_default and (param.default is not None or isinstance(param.show_default, str)), (
                name, param.name)


@pytest.mark.parametrize("name,shown", [
    ("sweep", ["[default: sentence,token]", "[default: 0,1,2]", "[default: metrics/sweep]", "[default: 3;"]),
    ("choose", ["[default: flops_speedup]", "--in-place", "--force", "--from"]),
    ("quantize", ["[default: int8]", "--force"]),
    ("annotate", ["[default: local]", "[default: 1024;", "[default: system]"]),
    ("render", ["[default: 0;"]),
])
def test_command_help_shows_defaults(name, shown, capsys):
    assert run([name, "--help"]) == (0, "")
    text = " ".join(capsys.readouterr().out.split())
    for part in shown:
        assert part in text, (part, text)


def test_one_meaning_per_flag():
    """--pipeline is sweep's NAME=PATH; choose names the sweep's pipeline with
    --from and takes a folder with --source."""
    command = typer.main.get_command(app)
    flags = {name: {opt for param in sub.params for opt in getattr(param, "opts", [])}
             for name, sub in command.commands.items()}
    assert "--pipeline" in flags["sweep"] and "--model" not in flags["sweep"]
    assert {"--from", "--source", "--output", "--in-place"} <= flags["choose"]
    assert "--pipeline" not in flags["choose"] and "--model" not in flags["choose"]
    assert "--modes" not in flags["sweep"] and "--exit-modes" in flags["sweep"]


# --- user mistakes: one line, exit status 1 ---------------------------------------
def test_sweep_mistakes(tmp_path):
    from spacy.tokens import Doc, DocBin
    from spacy.vocab import Vocab

    folder = tmp_path / "p"
    folder.mkdir()
    dev = tmp_path / "dev.spacy"
    DocBin(docs=[Doc(Vocab(), words=["a"])]).to_disk(dev)
    base = ["sweep", "--pipeline", f"a={folder}", "--dev", str(dev), "--no-progress"]
    assert_one_line_error(["sweep", "--pipeline", f"a={folder}", "--dev", str(tmp_path / "none.spacy")],
                          "--dev", "none.spacy", "no such file")
    assert_one_line_error(["sweep", "--pipeline", f"a={tmp_path / 'gone'}", "--dev", str(dev)],
                          "--pipeline a", "gone", "no such folder")
    assert_one_line_error(["sweep", "--pipeline", str(folder), "--dev", str(dev)], "--pipeline takes NAME=PATH")
    assert_one_line_error(base + ["--thresholds", "0.1,abc"], "--thresholds", "'abc' is not a number")
    assert_one_line_error(base + ["--windows", "x"], "--windows", "'x' is not an integer")
    assert_one_line_error(base + ["--later-factors", "4/x"], "--later-factors")
    assert_one_line_error(base + ["--max-layers", "0"], "--max-layers")
    assert_one_line_error(base + ["--repetitions", "abc"], "--repetitions")
    assert_one_line_error(base + ["--entity-margins", "off", "--entity-scales", "0.5"],
                          "--entity-scales does nothing without")
    assert_one_line_error(base + ["--bootstrap", "-1"], "--bootstrap")
    assert_one_line_error(base + ["--reference-repetitions", "1"], "--reference-repetitions does nothing")
    assert_one_line_error(["sweep", "--dev", str(dev)], "--pipeline")  # required
    # a file that is not a DocBin, and a folder that is not a pipeline: named, no traceback
    not_docbin = tmp_path / "text.spacy"
    not_docbin.write_text("hello")
    assert_one_line_error(["sweep", "--pipeline", f"a={folder}", "--dev", str(not_docbin)],
                          "--dev", "text.spacy", "not a .spacy file")
    assert_one_line_error(base, "--pipeline a", "not a spaCy pipeline")


def test_choose_mistakes(tmp_path):
    rule = ["--target-speedup", "2", "--output", str(tmp_path / "out")]
    assert_one_line_error(["choose", str(tmp_path / "none.json"), *rule], "none.json", "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("\n{oops")
    assert_one_line_error(["choose", str(bad), *rule], "bad.json:2", "not JSON")
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    assert_one_line_error(["choose", str(other), *rule], "other.json", "not a sweep result")
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"score_key": "pos_acc", "rows": [], "models": {}}))
    assert_one_line_error(["choose", str(sweep), "--target-speedup", "2"], "--output", "--in-place")
    assert_one_line_error(["choose", str(sweep), *rule, "--in-place"], "--in-place and --output")
    assert_one_line_error(["choose", str(sweep), "--output", str(tmp_path / "o")], "exactly one rule")
    assert_one_line_error(["choose", str(sweep), *rule, "--max-loss", "0.01"], "exactly one rule")
    assert_one_line_error(["choose", str(sweep), *rule, "--speedup-key", "fast"], "--speedup-key")
    assert_one_line_error(["choose", str(sweep), *rule, "--target-speedup", "x"], "--target-speedup")


def test_quantize_and_annotate_mistakes(tmp_path):
    assert_one_line_error(["quantize", str(tmp_path / "none"), str(tmp_path / "out")], "PIPELINE", "no such folder")
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_one_line_error(["quantize", str(tmp_path / "none"), str(existing)], "exists", "--force")
    assert (existing / "keep.txt").read_text() == "mine"
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n')
    assert_one_line_error(["annotate", str(tmp_path), str(source), str(tmp_path / "o.jsonl"), "--workers", "3"],
                          "--workers does nothing without --engine ray")
    assert_one_line_error(["annotate", str(tmp_path / "none"), str(source), str(tmp_path / "o.jsonl")],
                          "PIPELINE", "no such folder")
    assert_one_line_error(["annotate", str(tmp_path), str(source), str(tmp_path / "o.jsonl"), "--exit-mode", "fast"],
                          "--exit-mode")


def test_a_real_process_prints_one_line_and_exits_1(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "spacy_earlyexit", "choose", str(tmp_path / "none.json"), "--target-speedup", "2",
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "none.json: no such file" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# --- choose and quantize write only where asked --------------------------------
def sweep_json(tmp_path: Path, pipeline: Path, setting: Optional[dict] = None) -> Path:
    setting = setting or {"exit_mode": "token", "threshold": 0.3, "window": 1}
    rows = [
        {"model": "stage1", "name": "off", "setting": {"exit_mode": "off", "max_layer": None}, "score": 0.9,
         "flops_speedup": 1.0, "wall_speedup": 1.0, "exit_layer_mean": 3.0},
        {"model": "stage1", "name": "token", "setting": {**setting, "max_layer": None}, "score": 0.85,
         "flops_speedup": 2.5, "wall_speedup": 2.0, "exit_layer_mean": 1.2},
    ]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"score_key": "pos_acc", "rows": rows, "models": {"stage1": str(pipeline)}}))
    return path


def test_choose_writes_a_new_folder_and_leaves_the_source_alone(pos_pipeline, tmp_path, capsys):
    import spacy

    sweep = sweep_json(tmp_path, pos_pipeline)
    before = folder_digest(pos_pipeline)
    assert_one_line_error(["choose", str(sweep), "--target-speedup", "2"], "--output")
    assert folder_digest(pos_pipeline) == before
    chosen = tmp_path / "chosen"
    assert run(["choose", str(sweep), "--target-speedup", "2", "--output", str(chosen)]) == (0, "")
    assert folder_digest(pos_pipeline) == before
    settings = spacy.load(chosen).get_pipe("earlyexit_tagger").exit_settings
    assert (settings.exit_mode, settings.threshold, settings.window) == ("token", 0.3, 1)
    # saved through configure_exit: the config says it
    config = (chosen / "config.cfg").read_text()
    assert "threshold = 0.3" in config and 'exit_mode = "token"' in config, config
    # an existing --output is kept without --force, replaced with it
    assert_one_line_error(["choose", str(sweep), "--target-speedup", "2", "--output", str(chosen)],
                          "--output", "exists", "--force")
    (chosen / "stale.txt").write_text("old")
    assert run(["choose", str(sweep), "--target-speedup", "2", "--output", str(chosen), "--force"]) == (0, "")
    assert not (chosen / "stale.txt").exists()
    # --output naming the source itself is refused: that is --in-place
    assert_one_line_error(["choose", str(sweep), "--target-speedup", "2", "--output", str(pos_pipeline), "--force"],
                          "--in-place")
    assert folder_digest(pos_pipeline) == before
    # a setting the pipeline cannot run is refused before anything is written
    deep = sweep_json(tmp_path, pos_pipeline, {"exit_mode": "token", "threshold": 0.3, "window": 1, "max_layer": 9})
    rows = json.loads(deep.read_text())
    rows["rows"][1]["setting"]["max_layer"] = 9
    deep.write_text(json.dumps(rows))
    assert_one_line_error(["choose", str(deep), "--target-speedup", "2", "--output", str(tmp_path / "deep")],
                          "cannot take the setting")
    assert not (tmp_path / "deep").exists()


def test_choose_in_place(pos_pipeline, tmp_path):
    import shutil

    import spacy

    copy = tmp_path / "copy"
    shutil.copytree(pos_pipeline, copy)
    sweep = sweep_json(tmp_path, copy)
    assert run(["choose", str(sweep), "--target-speedup", "2", "--in-place"]) == (0, "")
    assert spacy.load(copy).get_pipe("earlyexit_tagger").exit_settings.threshold == 0.3


def loss_record(point: float, upper_90: float) -> dict:
    """A row's loss against "off" as `sweep` records it (score units)."""
    return {"point": point, "mean": point, "low": point - 0.002, "high": upper_90 + 0.001, "interval": 0.9,
            "upper": {"0.8": upper_90 - 0.001, "0.9": upper_90, "0.95": upper_90 + 0.001,
                      "0.975": upper_90 + 0.002, "0.99": upper_90 + 0.003},
            "resamples": 1000, "seed": 0}


def sweep_with_intervals(tmp_path: Path, pipeline: Path) -> Path:
    """off; t=0.05 (loss 0.0025, 90% bound 0.0042, 2.4x); t=0.1 (loss 0.0035
    but 90% bound 0.0062, 3.2x): within 0.005 on dev, not surely."""
    def token(threshold, score, flops, loss):
        return {"model": "stage1", "name": f"token t={threshold:g} k=1",
                "setting": {"exit_mode": "token", "threshold": threshold, "window": 1, "max_layer": None},
                "score": score, "flops_speedup": flops, "wall_speedup": flops * 0.8, "exit_layer_mean": 1.5,
                "loss": loss}

    rows = [
        {"model": "stage1", "name": "off", "setting": {"exit_mode": "off", "max_layer": None}, "score": 0.9,
         "flops_speedup": 1.0, "wall_speedup": 1.0, "exit_layer_mean": 3.0, "loss": loss_record(0.0, 0.0)},
        token(0.05, 0.8975, 2.4, loss_record(0.0025, 0.0042)),
        token(0.1, 0.8965, 3.2, loss_record(0.0035, 0.0062)),
    ]
    path = tmp_path / "sweep_intervals.json"
    path.write_text(json.dumps({"score_key": "pos_acc", "n_docs": 50, "rows": rows,
                                "bootstrap": {"resamples": 1000, "seed": 0, "interval": 0.9},
                                "models": {"stage1": str(pipeline)}}))
    return path


def test_choose_max_loss_takes_the_setting_that_holds(pos_pipeline, tmp_path, capsys):
    """--max-loss judges the loss's 90% upper bound by default: the faster
    setting that is within the budget only on dev is turned down (and
    named), --rule point takes it; the record says which rule and interval."""
    import spacy

    sweep = sweep_with_intervals(tmp_path, pos_pipeline)
    record = tmp_path / "point.json"
    assert run(["choose", str(sweep), "--max-loss", "0.005", "--output", str(tmp_path / "sure"),
                "--record", str(record)]) == (0, "")
    printed = capsys.readouterr().out
    assert "rule: confident" in printed and "90% upper bound of the loss" in printed and "seed 0" in printed
    assert "chosen: stage1 token t=0.05 k=1" in printed and "90% upper bound 0.0042" in printed
    assert "runner-up: none" in printed
    assert "faster but not sure enough: stage1 token t=0.1 k=1" in printed and "0.0062 is above 0.005" in printed
    assert spacy.load(tmp_path / "sure").get_pipe("earlyexit_tagger").exit_settings.threshold == 0.05
    saved = json.loads(record.read_text())
    assert (saved["rule_name"], saved["confidence"], saved["loss_upper_bound"]) == ("confident", 0.9, 0.0042)
    assert saved["loss"]["low"] == pytest.approx(0.0005) and saved["loss"]["resamples"] == 1000
    assert run(["choose", str(sweep), "--max-loss", "0.005", "--rule", "point",
                "--output", str(tmp_path / "risky"), "--record", str(record)]) == (0, "")
    assert spacy.load(tmp_path / "risky").get_pipe("earlyexit_tagger").exit_settings.threshold == 0.1
    assert json.loads(record.read_text())["rule_name"] == "point"


def test_choose_refuses_a_budget_no_setting_meets_with_confidence(pos_pipeline, tmp_path):
    sweep = sweep_with_intervals(tmp_path, pos_pipeline)
    assert_one_line_error(["choose", str(sweep), "--max-loss", "0.004", "--output", str(tmp_path / "none")],
                          "no setting is within a loss of 0.004 with 90% confidence",
                          "closest: stage1 token t=0.05 k=1 with a 90% upper bound of 0.0042", "--rule point")
    assert not (tmp_path / "none").exists()
    assert_one_line_error(["choose", str(sweep), "--max-loss", "0.005", "--confidence", "0.85",
                           "--output", str(tmp_path / "none")], "--confidence", "not 0.85")
    assert_one_line_error(["choose", str(sweep), "--max-loss", "0.005", "--rule", "sure",
                           "--output", str(tmp_path / "none")], "--rule must be confident or point")
    assert_one_line_error(["choose", str(sweep), "--target-speedup", "2", "--rule", "point",
                           "--output", str(tmp_path / "none")], "--rule", "--target-speedup")
    assert not (tmp_path / "none").exists()


def test_choose_an_old_sweep_without_intervals(pos_pipeline, tmp_path):
    """A sweep written before the intervals: --rule point works as before,
    the confident rule says what is missing."""
    import spacy

    sweep = sweep_json(tmp_path, pos_pipeline)  # no "loss" in its rows
    assert_one_line_error(["choose", str(sweep), "--max-loss", "0.1", "--output", str(tmp_path / "c")],
                          "no loss intervals", "--rule point")
    assert not (tmp_path / "c").exists()
    assert run(["choose", str(sweep), "--max-loss", "0.1", "--rule", "point", "--output", str(tmp_path / "c")]) == (0, "")
    assert spacy.load(tmp_path / "c").get_pipe("earlyexit_tagger").exit_settings.threshold == 0.3


def test_quantize_replaces_only_with_force(pos_pipeline, tmp_path):
    output = tmp_path / "int8"
    output.mkdir()
    (output / "stale.txt").write_text("old")
    assert_one_line_error(["quantize", str(pos_pipeline), str(output)], "exists", "--force")
    assert (output / "stale.txt").exists()
    assert run(["quantize", str(pos_pipeline), str(output), "--force"]) == (0, "")
    assert not (output / "stale.txt").exists() and (output / "config.cfg").exists()


# --- sweep ------------------------------------------------------------------
def test_sweep_without_matplotlib_writes_json_and_markdown(pos_pipeline, dev_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    stem = tmp_path / "sweep"
    assert run(["sweep", "--pipeline", f"m={pos_pipeline}", "--dev", str(dev_file), "--output", str(stem),
                "--exit-modes", "token", "--thresholds", "0.5", "--windows", "0", "--repetitions", "1",
                "--no-progress"]) == (0, "")
    printed = capsys.readouterr().out
    result = json.loads(stem.with_suffix(".json").read_text())
    assert [row["name"] for row in result["rows"]] == ["off", "token t=0.5 k=0"]
    assert stem.with_suffix(".md").read_text().startswith("| model | mode |")
    assert not stem.with_suffix(".png").exists()
    assert 'pip install "spacy-earlyexit[plot]"' in printed
    assert sum('pip install "spacy-earlyexit[plot]"' in line for line in printed.splitlines()) == 1


def test_sweep_times_the_precision_asked_for(pos_pipeline, dev_file, tmp_path, monkeypatch, capsys):
    from spacy_earlyexit.model import precision as precision_module
    from spacy_earlyexit.model.precision import CpuFeatures

    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(amx=True, avx512_bf16=True, vnni=True))
    stem = tmp_path / "sweep"
    base = ["sweep", "--pipeline", f"m={pos_pipeline}", "--dev", str(dev_file), "--output", str(stem),
            "--exit-modes", "token", "--thresholds", "0.5", "--windows", "0", "--repetitions", "1", "--no-progress"]
    assert run(base + ["--precision", "auto"])[0] == 0
    assert "precision m bfloat16" in capsys.readouterr().out
    assert json.loads(stem.with_suffix(".json").read_text())["precisions"] == {"m": "bfloat16"}
    assert run(base)[0] == 0
    assert json.loads(stem.with_suffix(".json").read_text())["precisions"] == {"m": "float32"}  # as saved
    assert_one_line_error(base + ["--precision", "half"], "--precision must be one of", "'half'")


@pytest.fixture
def no_timing(monkeypatch):
    """Fail the test if the sweep times anything."""
    from spacy_earlyexit.tuning import sweep

    def refuse(*args, **kwargs):
        raise AssertionError("the sweep ran a setting before checking the grid")

    monkeypatch.setattr(sweep, "time_pipe", refuse)
    monkeypatch.setattr(sweep, "time_interleaved", refuse)


def test_sweep_refuses_an_entity_rule_on_a_pos_pipeline_before_any_work(pos_pipeline, dev_file, tmp_path, no_timing):
    message = assert_one_line_error(
        ["sweep", "--pipeline", f"pos={pos_pipeline}", "--dev", str(dev_file), "--output", str(tmp_path / "s"),
         "--exit-modes", "token", "--thresholds", "0.2", "--windows", "0", "--entity-margins", "off,1",
         "--no-progress"],
        "pipeline 'pos'", "token t=0.2 k=0 E1", "entity",
    )
    assert "ner" in message
    assert not (tmp_path / "s.json").exists()


def test_sweep_refuses_a_cap_deeper_than_one_of_the_pipelines(tiny_bert, pos_pipeline, dev_file, tmp_path, no_timing):
    """Pipelines of different depths: build_grid cannot check the cap, the
    grid check before the sweep does."""
    shallow = tmp_path / "shallow"
    train_tiny_pipeline(tiny_bert, "pos", 0, model={"keep_layers": 2}).to_disk(shallow)
    assert_one_line_error(
        ["sweep", "--pipeline", f"deep={pos_pipeline}", "--pipeline", f"shallow={shallow}", "--dev", str(dev_file),
         "--output", str(tmp_path / "s"), "--exit-modes", "token", "--thresholds", "0.2", "--windows", "0",
         "--max-layers", "3,all", "--no-progress"],
        "pipeline 'shallow'", "≤L3", "max_layer",
    )
    assert not (tmp_path / "s.json").exists()
