"""`evaluate`: the score with the pipeline's exit setting, config overrides
as `spacy train` takes them, a timing against full depth, one-line errors."""
import json

import pytest

from helpers.tiny_bert import NER_DATA, train_tiny_pipeline
from spacy_earlyexit.cli import main

PIPE = "earlyexit_tagger"


def run(argv):
    try:
        main(argv)
    except SystemExit as exit:
        return (1, exit.code) if isinstance(exit.code, str) else (exit.code or 0, "")
    return 0, ""


@pytest.fixture(scope="module")
def ner(tiny_bert, tmp_path_factory):
    """A tiny NER pipeline saved with token exit at threshold 0.7, and its data."""
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    root = tmp_path_factory.mktemp("evaluate")
    nlp = train_tiny_pipeline(tiny_bert, "ner", 60)
    nlp.get_pipe(PIPE).configure_exit(exit_mode="token", threshold=0.7, window=0)
    nlp.to_disk(root / "pipeline")
    blank = spacy.blank("en")
    gold = [Example.from_dict(blank.make_doc(t), {"entities": e}).reference for t, e in NER_DATA]
    DocBin(docs=gold).to_disk(root / "dev.spacy")
    return root


def test_scores_the_saved_setting_and_times_it(ner, capsys):
    out = ner / "scores.json"
    assert run(["evaluate", str(ner / "pipeline"), str(ner / "dev.spacy"), "--repetitions", "1", "-o", str(out)]) == (0, "")
    result = json.loads(out.read_text())
    assert result["exit_setting"]["exit_mode"] == "token" and result["exit_setting"]["threshold"] == 0.7
    assert result["scores"]["flops_speedup"] > 1.0
    assert result["timing"]["wall_speedup"] > 0 and len(result["timing"]["seconds"]["setting"]) == 1
    assert "wall-clock speed-up" in capsys.readouterr().out


def test_config_overrides_take_effect(ner):
    out = ner / "off.json"
    argv = ["evaluate", str(ner / "pipeline"), str(ner / "dev.spacy"), "--repetitions", "0", "-o", str(out),
            "--components.earlyexit_tagger.exit_mode", "off"]
    assert run(argv) == (0, "")
    result = json.loads(out.read_text())
    assert result["exit_setting"]["exit_mode"] == "off"
    assert result["overrides"] == {"components.earlyexit_tagger.exit_mode": "off"}
    assert result["scores"]["flops_speedup"] == pytest.approx(1.0)
    assert "timing" not in result


def test_mistakes_give_one_line(ner, tmp_path):
    status, message = run(["evaluate", str(ner / "pipeline"), str(ner / "dev.spacy"),
                           "--components.earlyexit_tagger.thresold", "0.1"])
    assert status == 1 and "thresold" in message and "\n" not in message
    status, message = run(["evaluate", str(ner / "pipeline"), str(tmp_path / "missing.spacy")])
    assert status == 1 and "missing.spacy" in message
    status, message = run(["evaluate", str(ner / "pipeline"), str(ner / "dev.spacy"),
                           "--components.earlyexit_tagger.threshold", "2.0"])
    assert status == 1 and "threshold" in message and "\n" not in message
