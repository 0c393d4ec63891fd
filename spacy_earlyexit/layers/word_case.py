"""Case classes of spaCy tokens, for encoders whose vocabulary is uncased.

An uncased tokenizer (MiniLM, bert-base-uncased) lowercases its input, so the
encoder cannot tell "apple" from "Apple" or "US" from "us", which named
entities and proper nouns depend on. With `case_features` the thinc layer
gives every word piece the case class of its token, and the encoder adds a
learned embedding of it to the piece's input state (EarlyExitEncoder).
"""
from typing import List, Sequence

import numpy
from spacy.tokens import Doc

#: class 0 is kept for pieces of no token ([CLS], [SEP], padding)
NO_CASE = 0
LOWER = 1  # has cased letters, all lower: "apple"
TITLE = 2  # first cased letter upper, the rest lower, not sentence-initial: "Apple"
TITLE_INITIAL = 3  # the same, first token of a sentence (capitalized anyway)
UPPER = 4  # two or more cased letters, all upper: "USA", "NATO"
MIXED = 5  # other mixes of upper and lower: "iPhone", "McDonald"
UNCASED = 6  # no cased letter: "42", ",", "北京"
#: number of case classes (not counting NO_CASE)
N_CASE_CLASSES = 6


def case_class(text: str, sentence_initial: bool) -> int:
    """The case class (1..N_CASE_CLASSES) of one token's text."""
    cased = [char for char in text if char.lower() != char.upper()]
    if not cased:
        return UNCASED
    if all(char.islower() for char in cased):
        return LOWER
    if all(char.isupper() for char in cased):
        if len(cased) == 1:
            return TITLE_INITIAL if sentence_initial else TITLE
        return UPPER
    if cased[0].isupper() and all(char.islower() for char in cased[1:]):
        return TITLE_INITIAL if sentence_initial else TITLE
    return MIXED


def doc_case_classes(doc: Doc) -> numpy.ndarray:
    """[n_tokens] int64: the case class of each token of `doc`. A token is
    sentence-initial when it starts the doc or spaCy marks it as a sentence
    start (is_sent_start True; unset sentence boundaries count as not)."""
    return numpy.asarray(
        [case_class(token.text, token.i == 0 or token.is_sent_start is True) for token in doc],
        dtype="int64",
    )


def word_case_classes(docs: Sequence[Doc], word_doc: numpy.ndarray, word_token: numpy.ndarray) -> numpy.ndarray:
    """[W] int64: the case class of each word, given its doc ([W] index into
    `docs`) and its token in that doc ([W])."""
    per_doc: List[numpy.ndarray] = [doc_case_classes(doc) for doc in docs]
    offsets = numpy.zeros(len(per_doc) + 1, dtype="int64")
    offsets[1:] = numpy.cumsum([len(classes) for classes in per_doc])
    flat = numpy.concatenate(per_doc) if per_doc else numpy.zeros(0, dtype="int64")
    if not len(word_doc):
        return numpy.zeros(0, dtype="int64")
    return flat[offsets[word_doc] + word_token]
