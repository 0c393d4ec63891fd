"""`spacy train configs/pos_joint.cfg` end to end on a tiny corpus."""
import os
import subprocess
import sys
from pathlib import Path

import spacy
import srsly
from spacy.tokens import Doc, DocBin

from helpers.sentencepiece_bert import write_sentencepiece_bert
from helpers.tiny_bert import NER_DATA, POS_DATA


ROOT = Path(__file__).resolve().parents[2]
UPOS_IN_DATA = {tag for _, tags in POS_DATA for tag in tags}


def write_corpus(path: Path) -> Path:
    vocab = spacy.blank("en").vocab
    docbin = DocBin()
    for text, tags in POS_DATA:
        words = text.split()
        docbin.add(Doc(vocab, words=words, pos=tags))
    docbin.to_disk(path)
    return path


def test_spacy_train_pos_joint(tiny_bert, tmp_path):
    corpus = write_corpus(tmp_path / "pos.spacy")
    output = tmp_path / "output"
    command = [
        sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "pos_joint.cfg"),
        "--output", str(output),
        "--paths.train", str(corpus),
        "--paths.dev", str(corpus),
        "--paths.backbone", str(tiny_bert),
        "--training.max_steps", "20",
        "--training.eval_frequency", "10",
        # five sentences make one batch: without this, max_epochs = 2 ends at step 2
        "--training.max_epochs", "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    # evaluated at steps 10 and 20 (the console table's step column)
    steps = [line.split()[1] for line in run.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert "10" in steps and "20" in steps, log
    assert (output / "model-best").is_dir()

    nlp = spacy.load(output / "model-last")
    assert nlp.pipe_names == ["earlyexit_tagger"]
    tagger = nlp.get_pipe("earlyexit_tagger")
    assert set(tagger.labels) == UPOS_IN_DATA
    doc = nlp("Alice visited Paris .")
    assert all(t.pos_ in UPOS_IN_DATA | {"SPACE"} for t in doc)
    assert doc._.exit_layers == [3] * 4
    meta = srsly.read_json(output / "model-last" / "meta.json")
    assert 0.0 <= meta["performance"]["pos_acc"] <= 1.0


def write_ner_corpus(path: Path) -> Path:
    nlp = spacy.blank("en")
    docbin = DocBin()
    for text, entities in NER_DATA:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in entities]
        docbin.add(doc)
    docbin.to_disk(path)
    return path


def test_spacy_train_ner_joint_e5_keeps_the_first_eight_layers(tmp_path):
    """configs/ner_joint_e5.cfg (keep_layers = 8, frozen word embeddings) on
    a 10-layer SentencePiece BERT: the trained pipeline has 8 layers."""
    backbone = write_sentencepiece_bert(tmp_path / "e5_like", n_layers=10)
    corpus = write_ner_corpus(tmp_path / "ner.spacy")
    output = tmp_path / "output"
    command = [
        sys.executable, "-m", "spacy", "train", str(ROOT / "configs" / "ner_joint_e5.cfg"),
        "--output", str(output), "--paths.train", str(corpus), "--paths.dev", str(corpus),
        "--paths.backbone", str(backbone), "--training.eval_frequency", "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    nlp = spacy.load(output / "model-last")
    assert nlp.config["components"]["earlyexit_tagger"]["model"]["keep_layers"] == 8
    assert nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder.n_layers == 8
    doc = nlp("Alice visited Paris .")
    assert doc._.exit_layers == [8] * 4
    assert "ents_f" in srsly.read_json(output / "model-last" / "meta.json")["performance"]
