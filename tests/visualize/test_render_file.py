"""render_file: a saved tiny pipeline annotates a file and writes the page."""
import json

import pytest
import spacy
from spacy.tokens import DocBin, Span

from helpers.tiny_bert import train_tiny_pipeline
from spacy_earlyexit.corpus.formats import AnnotateInputError
from spacy_earlyexit.visualize import render_file
from spacy_earlyexit.visualize.render_file import input_format, read_text_lines

from helpers.html_tree import parse

TEXTS = ["Alice lives in Paris .", "Bob visited London yesterday .", "The weather is nice ."]


@pytest.fixture(scope="module")
def ner_pipeline(tiny_bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("render_file") / "pipeline"
    train_tiny_pipeline(tiny_bert, "ner", steps=2).to_disk(path)
    return path


def test_plain_text_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffone\r\n\n  \ntwo  words\n".encode("utf8"))
    assert list(read_text_lines(path)) == ["one", "two  words"]
    assert input_format(path) == "text"
    with pytest.raises(AnnotateInputError, match=r"\.txt"):
        input_format(tmp_path / "in.csv")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".spacy"])
def test_render_file_writes_a_page(ner_pipeline, tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        source.write_text("\n".join(TEXTS) + "\n", encoding="utf8")
    elif suffix == ".jsonl":
        source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf8")
    else:
        nlp = spacy.blank("en")
        docs = [nlp.make_doc(t) for t in TEXTS]
        docs[0].ents = [Span(docs[0], 0, 1, "GOLD")]  # gold annotation: not what the page shows
        DocBin(docs=docs).to_disk(source)
    output = render_file(ner_pipeline, source, tmp_path / "out" / "exits.html",
                         exit_overrides={"exit_mode": "token", "threshold": 0.5}, limit=2)
    tree = parse(output.read_text(encoding="utf8"))
    figures = tree.find_all("ee-figure")
    assert [f.find("ee-tokens").text(skip_classes=("ee-ent-label",)) for f in figures] == TEXTS[:2]
    assert [int(s.attrs["data-layer"]) for s in tree.find_all("ee-swatch")] == [1, 2, 3]  # the tiny BERT's depth
    layers = [int(t.attrs["data-exit-layer"]) for t in tree.find_all("ee-token")]
    assert len(layers) == 10 and all(1 <= layer <= 3 for layer in layers)
    assert "GOLD" not in [mark.attrs["data-label"] for mark in tree.find_all("ee-ent")]
    summary = figures[0].find("ee-summary").text()
    assert "exit mode token" in summary and "threshold 0.5" in summary and "window 0" in summary


def test_render_file_errors(ner_pipeline, tmp_path):
    with pytest.raises(AnnotateInputError, match="no such file"):
        render_file(ner_pipeline, tmp_path / "missing.txt", tmp_path / "out.html")
    with pytest.raises(ValueError, match="threshold"):
        render_file(ner_pipeline, tmp_path / "missing.txt", tmp_path / "out.html", exit_overrides={"threshold": 2})
    with pytest.raises(ValueError, match="limit"):
        render_file(ner_pipeline, tmp_path / "missing.txt", tmp_path / "out.html", limit=-1)
