"""Saving and loading: to_disk/from_disk without the original model folder,
to_bytes/from_bytes, persisted exit settings, custom attributes through doc
serialization and multiprocessing, no pickle or remote code, `spacy package`."""
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
import srsly
import torch
import transformers
from safetensors.torch import load as load_safetensors
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.util import load_model_from_config

from helpers.tiny_bert import NER_DATA, POS_DATA, train_tiny_pipeline


TAGGER = "earlyexit_tagger"
TEXTS = [text for text, _ in NER_DATA + POS_DATA] + ["hello world", "", "Alice  met \n Bob ."]
# after 100 steps these give a mix of exit layers (checked in the fixture)
TOKEN_EXIT = {"exit_mode": "token", "threshold": 0.5, "window": 1}


def subprocess_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def results(docs: List[Doc]) -> List[Tuple]:
    """Everything the tagger writes, per doc."""
    return [
        (
            [(e.start, e.end, e.label_) for e in doc.ents],
            [t.ent_iob_ for t in doc],
            [t.tag_ for t in doc],
            [t.pos_ for t in doc],
            doc._.exit_layers,
            doc._.early_exit,
        )
        for doc in docs
    ]


def train_pipeline(bert: Path, task: str, steps: int) -> Language:
    return train_tiny_pipeline(bert, task, steps)


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    """A pipeline built from a copy of the tiny BERT, trained a little, with
    token exit configured, saved to disk; then the copy is deleted.
    Returns (nlp, saved folder, results with the saved exit settings)."""
    root = tmp_path_factory.mktemp("saved")
    bert_copy = root / "bert_copy"
    shutil.copytree(tiny_bert, bert_copy)
    nlp = train_pipeline(bert_copy, "ner", 100)
    nlp.get_pipe(TAGGER).configure_exit(**TOKEN_EXIT)
    expected = results(list(nlp.pipe(TEXTS)))
    layers = {layer for doc_result in expected for layer in doc_result[4]}
    assert len(layers) > 1, f"precondition: a mix of exit layers, got {layers}"
    folder = root / "pipeline"
    nlp.to_disk(folder)
    shutil.rmtree(bert_copy)
    return nlp, folder, expected


def test_load_from_disk_without_the_original_model(saved):
    nlp, folder, expected = saved
    loaded = spacy.load(folder)
    assert loaded.get_pipe(TAGGER).exit_settings == nlp.get_pipe(TAGGER).exit_settings
    assert results(list(loaded.pipe(TEXTS))) == expected
    # at full depth too
    off = {TAGGER: {"exit_mode": "off"}}
    assert results(list(loaded.pipe(TEXTS, component_cfg=off))) == results(
        list(nlp.pipe(TEXTS, component_cfg=off))
    )


def test_loaded_weights_equal_the_trained_ones(saved):
    nlp, folder, _ = saved
    loaded = spacy.load(folder)
    ours = nlp.get_pipe(TAGGER).model.shims[0].encoder.state_dict()
    theirs = loaded.get_pipe(TAGGER).model.shims[0].encoder.state_dict()
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert loaded.get_pipe(TAGGER).labels == ("LOC", "PER")


def test_to_bytes_from_bytes(saved):
    nlp, _, expected = saved
    data = nlp.to_bytes()
    # built from the config, whose model name is the deleted folder: from_bytes
    # must not need it
    restored = load_model_from_config(nlp.config, auto_fill=True, validate=True)
    restored.from_bytes(data)
    assert results(list(restored.pipe(TEXTS))) == expected
    # the component alone, too
    tagger_bytes = nlp.get_pipe(TAGGER).to_bytes()
    other = load_model_from_config(nlp.config)
    other.get_pipe(TAGGER).from_bytes(tagger_bytes)
    assert results(list(other.pipe(TEXTS))) == expected


def test_configure_exit_is_persisted(saved, tmp_path):
    nlp, folder, _ = saved
    tagger = nlp.get_pipe(TAGGER)
    assert spacy.load(folder).get_pipe(TAGGER).exit_settings.to_dict() == {
        **tagger.exit_settings.to_dict(),
        **TOKEN_EXIT,
    }
    tagger.configure_exit(exit_mode="sentence", threshold=0.3, sentence_score="mean")
    try:
        nlp.to_disk(tmp_path / "changed")
        expected = results(list(nlp.pipe(TEXTS)))
    finally:
        tagger.configure_exit(**TOKEN_EXIT, sentence_score="max")
    loaded = spacy.load(tmp_path / "changed")
    settings = loaded.get_pipe(TAGGER).exit_settings
    assert (settings.exit_mode, settings.sentence_score) == ("sentence", "mean")
    # exactly (srsly's JSON reader, which loading used before, parsed 0.3 as
    # 0.30000000000000004)
    assert settings.threshold == 0.3
    assert results(list(loaded.pipe(TEXTS))) == expected


def test_tag_pipeline_round_trip(tiny_bert, tmp_path):
    nlp = train_pipeline(tiny_bert, "tag", 30)
    nlp.to_disk(tmp_path / "tagger")
    loaded = spacy.load(tmp_path / "tagger")
    assert loaded.get_pipe(TAGGER).labels == nlp.get_pipe(TAGGER).labels
    assert results(list(loaded.pipe(TEXTS))) == results(list(nlp.pipe(TEXTS)))


# --- custom attributes survive doc serialization ------------------------------------


def test_attributes_survive_doc_to_bytes(saved):
    nlp, _, expected = saved
    docs = list(nlp.pipe(TEXTS))
    restored = [Doc(nlp.vocab).from_bytes(doc.to_bytes()) for doc in docs]
    assert results(restored) == expected
    assert [[t._.exit_layer for t in doc] for doc in restored] == [r[4] for r in expected]


def test_attributes_survive_docbin(saved):
    nlp, _, expected = saved
    docbin = DocBin(store_user_data=True, docs=nlp.pipe(TEXTS))
    restored = list(DocBin().from_bytes(docbin.to_bytes()).get_docs(spacy.blank("en").vocab))
    assert results(restored) == expected


def test_attributes_survive_multiprocessing(saved):
    nlp, _, expected = saved
    texts = TEXTS * 3
    single = results(list(nlp.pipe(texts, n_process=1, batch_size=4)))
    double = results(list(nlp.pipe(texts, n_process=2, batch_size=4)))
    assert single == expected * 3
    assert double == single


# --- no pickle ------------------------------------------------------------------------


def test_saved_model_holds_no_pickle(saved, monkeypatch):
    nlp, folder, expected = saved
    for path in (folder / TAGGER).rglob("*"):  # (vocab/lookups.bin is spaCy's msgpack)
        assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".pickle"), path
    # thinc's model file: msgpack with one bytes entry per shim; the shim's: msgpack
    # with the weights as safetensors
    model_msg = srsly.msgpack_loads((folder / TAGGER / "model").read_bytes())
    shim_msg = srsly.msgpack_loads(model_msg["shims"][0][0])
    state = load_safetensors(shim_msg["weights"])
    live = nlp.get_pipe(TAGGER).model.shims[0].encoder.state_dict()
    assert set(state) == set(live)
    assert all(torch.equal(state[name], live[name]) for name in live)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a saved pipeline must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    # nor run remote code: record every Hugging Face loader's keyword arguments
    calls = []

    def recorder(owner, method):
        original = getattr(owner, method)

        def record(*args, **kwargs):
            calls.append((f"{owner.__name__}.{method}", kwargs))
            return original(*args, **kwargs)

        return record

    for owner in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer):
        for method in ("from_pretrained", "from_config", "for_model"):
            if hasattr(owner, method):
                monkeypatch.setattr(owner, method, recorder(owner, method))
    loaded = spacy.load(folder)
    assert results(list(loaded.pipe(TEXTS))) == expected
    assert {name for name, _ in calls} >= {
        "AutoConfig.for_model", "AutoModel.from_config", "AutoTokenizer.from_pretrained"
    }
    assert not [name for name, kwargs in calls if kwargs.get("trust_remote_code")]


# --- spacy package -----------------------------------------------------------------------


def test_spacy_package(saved, tmp_path):
    _, folder, expected = saved
    output = tmp_path / "packages"
    output.mkdir()
    command = [sys.executable, "-m", "spacy", "package", str(folder), str(output),
               "--name", "tiny", "--version", "0.0.1", "--build", "none"]
    run = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    package = output / "en_tiny-0.0.1"
    meta = srsly.read_json(package / "meta.json")
    assert (meta["name"], meta["version"], meta["pipeline"]) == ("tiny", "0.0.1", [TAGGER])
    # the installed package must bring the component's code along
    assert any(req.startswith("spacy-earlyexit") for req in meta["requirements"]), meta["requirements"]
    data = package / "en_tiny" / "en_tiny-0.0.1"
    config = spacy.util.load_config(data / "config.cfg")
    assert config["components"][TAGGER]["factory"] == TAGGER
    assert (data / TAGGER / "model").read_bytes() == (folder / TAGGER / "model").read_bytes()
    assert results(list(spacy.load(data).pipe(TEXTS))) == expected
