"""Case classes of tokens (layers/word_case.py) and their piece grid in
encoder batches (DocPieces.encoder_batch), against by-hand values."""
import numpy
import pytest
import spacy
from spacy.tokens import Doc

from spacy_earlyexit.layers.word_case import (
    LOWER, MIXED, TITLE, TITLE_INITIAL, UNCASED, UPPER, case_class, doc_case_classes, word_case_classes,
)


@pytest.mark.parametrize(
    "text, initial, expected",
    [
        ("apple", False, LOWER), ("Apple", False, TITLE), ("Apple", True, TITLE_INITIAL),
        ("USA", False, UPPER), ("USA", True, UPPER), ("I", False, TITLE), ("A", True, TITLE_INITIAL),
        ("iPhone", False, MIXED), ("McDonald", False, MIXED), ("42", False, UNCASED),
        (",", True, UNCASED), ("北京", False, UNCASED), ("Émile", False, TITLE), ("ÉCOLE", False, UPPER),
        ("3M", False, TITLE), ("x86", False, LOWER), ("O'Neil", False, MIXED), ("Straße", False, TITLE),
        ("😀", False, UNCASED),
    ],
)
def test_case_class_by_hand(text, initial, expected):
    assert case_class(text, initial) == expected


def test_doc_case_classes_sentence_starts():
    nlp = spacy.blank("en")
    doc = Doc(nlp.vocab, words=["The", "Apple", "fell", ".", "The", "US", "won"],
              sent_starts=[True, False, False, False, True, False, False])
    assert doc_case_classes(doc).tolist() == [TITLE_INITIAL, TITLE, LOWER, UNCASED, TITLE_INITIAL, UPPER, LOWER]
    # without sentence boundaries only the first token counts as initial
    plain = Doc(nlp.vocab, words=["The", "Apple", "."])
    assert doc_case_classes(plain).tolist() == [TITLE_INITIAL, TITLE, UNCASED]


def test_word_case_classes_index_docs_and_tokens():
    nlp = spacy.blank("en")
    docs = [nlp.make_doc("Paris is big"), nlp.make_doc("so is NYC")]
    got = word_case_classes(docs, numpy.array([1, 0, 1, 0]), numpy.array([2, 0, 0, 2]))
    assert got.tolist() == [UPPER, TITLE_INITIAL, LOWER, LOWER]
    assert word_case_classes(docs, numpy.zeros(0, dtype="int64"), numpy.zeros(0, dtype="int64")).tolist() == []
