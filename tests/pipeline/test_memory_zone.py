"""spaCy 3.8's nlp.memory_zone() with the earlyexit_tagger, and the annotate
job's per-batch zones (corpus/annotate.py, corpus/job.py).

References: the same texts run without a zone (annotations are read inside
the zone, as plain Python values), and the StringStore's size before the
zones.
"""
import importlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, List

import pytest
from spacy.tokens import DocBin
from spacy.tokens.underscore import Underscore

from helpers.tiny_bert import NER_DATA, POS_DATA, train_tiny_pipeline
from spacy_earlyexit.corpus import annotate
from spacy_earlyexit.corpus.job import batch_memory_zone
from spacy_earlyexit.pipeline.extensions import EXIT_LAYERS_KEY

# the module (the package's `annotate` is the function)
annotate_module = importlib.import_module("spacy_earlyexit.corpus.annotate")

#: per task, a token exit that gives a mix of exit layers after 100 steps
TOKEN_EXIT = {"ner": {"exit_mode": "token", "threshold": 0.5, "window": 1},
              "pos": {"exit_mode": "token", "threshold": 0.8, "window": 1}}
KNOWN = [text for text, _ in NER_DATA + POS_DATA]


def novel_texts(tag: str, n_docs: int) -> List[str]:
    """Texts with words no pipeline has seen (new strings for the StringStore)."""
    return [f"{KNOWN[i % len(KNOWN)]} zq{tag}x{i} Paris wv{tag}y{i} ." for i in range(n_docs)]


@pytest.fixture(scope="module", params=["ner", "pos"])
def nlp(request, tiny_bert):
    """A NER or a POS pipeline whose token exit gives a mix of exit layers."""
    pipeline = train_tiny_pipeline(tiny_bert, request.param, 100)
    pipeline.get_pipe("earlyexit_tagger").configure_exit(**TOKEN_EXIT[request.param])
    return pipeline


def annotations(docs) -> List[Any]:
    """Everything the component writes, as plain Python values."""
    return [(
        [(t.text, t.whitespace_, t.ent_iob_, t.ent_type_, t.tag_, t.pos_, t._.exit_layer) for t in doc],
        [(e.start_char, e.end_char, e.label_) for e in doc.ents],
        doc._.exit_layers, doc._.early_exit,
    ) for doc in docs]


def test_annotations_inside_a_zone_are_those_without(nlp):
    texts = KNOWN + novel_texts("same", 12)
    outside = annotations(nlp.pipe(texts, batch_size=4))
    with nlp.memory_zone():
        inside = annotations(nlp.pipe(texts, batch_size=4))
    assert inside == outside
    assert len({layer for doc in outside for layer in doc[2]}) > 1, "precondition: a mix of exit layers"
    # and once more after the zone: nothing the zone freed was needed
    assert annotations(nlp.pipe(texts, batch_size=4)) == outside


def test_strings_and_extension_state_stay_bounded_over_many_zones(nlp):
    list(nlp.pipe(KNOWN))  # the known words' strings are permanent
    # lexemes counted by iterating: len(vocab) counts every lexeme ever added
    strings, lexemes = len(nlp.vocab.strings), sum(1 for _ in nlp.vocab)
    extensions = tuple(len(table) for table in Underscore.get_state())
    for zone in range(20):
        with nlp.memory_zone():
            docs = list(nlp.pipe(novel_texts(f"z{zone}", 16), batch_size=8))
            assert len(nlp.vocab.strings) > strings  # precondition: the zone added strings
            # per doc: one exit-layer entry and early_exit, whatever its length
            assert all(set(doc.user_data) == {EXIT_LAYERS_KEY, ("._.", "early_exit", None, None)}
                       for doc in docs)
            del docs
        assert len(nlp.vocab.strings) == strings
        assert sum(1 for _ in nlp.vocab) == lexemes
        assert tuple(len(table) for table in Underscore.get_state()) == extensions
    # without zones the same kind of stream keeps its strings
    list(nlp.pipe(novel_texts("nozone", 16)))
    assert len(nlp.vocab.strings) >= strings + 32


def write_jsonl(path: Path, texts: List[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)),
                    encoding="utf8")
    return path


def test_annotate_output_is_the_same_with_and_without_zones(nlp, tmp_path, monkeypatch):
    texts = KNOWN + novel_texts("annotate", 10)
    source = write_jsonl(tmp_path / "in.jsonl", texts)
    strings = len(nlp.vocab.strings)
    for output in ("zones.jsonl", "zones.spacy"):
        annotate(nlp, source, tmp_path / output, batch_size=4, progress=False)
    # the run's new words were freed batch by batch
    assert len(nlp.vocab.strings) == strings
    monkeypatch.setattr(annotate_module, "batch_memory_zone", lambda nlp: nullcontext())
    for output in ("plain.jsonl", "plain.spacy"):
        annotate(nlp, source, tmp_path / output, batch_size=4, progress=False)
    assert len(nlp.vocab.strings) > strings  # precondition: without zones they stay
    zones, plain = (tmp_path / "zones.jsonl").read_text("utf8"), (tmp_path / "plain.jsonl").read_text("utf8")
    assert zones == plain and len(zones.splitlines()) == len(texts)
    read = [list(DocBin(store_user_data=True).from_disk(tmp_path / name).get_docs(nlp.vocab))
            for name in ("zones.spacy", "plain.spacy")]
    assert annotations(read[0]) == annotations(read[1])
    assert [d.user_data["meta"] for d in read[0]] == [d.user_data["meta"] for d in read[1]]
    assert [d.text for d in read[0]] == texts


def test_no_zone_inside_a_callers_zone(nlp):
    """spaCy's zones must not be nested: annotate's batch zone stands aside."""
    with nlp.memory_zone():
        assert isinstance(batch_memory_zone(nlp), nullcontext)
    assert not isinstance(batch_memory_zone(nlp), nullcontext)
