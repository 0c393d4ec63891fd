"""Corpus converters: CoNLL-U and BIO / IOB column files -> spaCy's .spacy.

Column files have one token per line (columns separated by tabs or spaces)
and a blank line between sentences, as in CoNLL-2003 (word first, IOB1 NER
tag last, `-DOCSTART-` lines), WNUT-16 (word, BIO tag) and Universal NER
(`.iob2`: index, word, IOB2 tag, two annotator columns, CoNLL-U style `#`
comment lines). The word column is the first one, or the second when the
first holds the token indices 1, 2, 3, ...; the tag column is the last
column whose every value is a tag (O, B-X, I-X). Both IOB variants are read
by spaCy's iob_to_biluo: an entity starts at a B- tag, or at an I- tag that
does not continue an entity of its type.
"""
import random
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo
from spacy.training.converters import conllu_to_docs
from spacy.vocab import Vocab

Sentence = List[Tuple[str, str]]
#: a sentence with the line number of each token: (word, tag, line)
NumberedSentence = List[Tuple[str, str, int]]
COLUMN_FORMATS = ("bio", "iob")


def read_columns(path: Union[str, Path], encoding: str = "utf8") -> List[Sentence]:
    """Sentences of (word, tag) pairs from a column file (see the module
    docstring for the columns).

    Lines are split on tabs if they contain one, else on whitespace. Blank
    (or whitespace-only) lines end a sentence; `-DOCSTART-` lines and
    comment lines (starting with "#", holding "=" and no tab, as
    `# sent_id = ...`) are skipped. Raises ValueError naming the file and
    line for a line with a single field or with fewer columns than the
    file's tag column, and for a file that is not text in `encoding`.
    """
    return [[(word, tag) for word, tag, _ in sentence] for sentence in read_numbered_columns(path, encoding)]


def read_numbered_columns(path: Union[str, Path], encoding: str = "utf8") -> List[NumberedSentence]:
    """read_columns with the line number (1-based) of every token: sentences
    of (word, tag, line number)."""
    rows: List[Tuple[int, List[str]]] = []  # (line number, fields); [] ends a sentence
    try:
        text = Path(path).read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not {encoding} text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            rows.append((number, []))
            continue
        if _is_comment(line):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: expected a word and a tag, got {line!r}")
        rows.append((number, fields))
    word_column, tag_column = _columns(path, [fields for _, fields in rows if fields])
    sentences: List[NumberedSentence] = []
    current: NumberedSentence = []
    for number, fields in rows:
        if not fields:
            if current:
                sentences.append(current)
                current = []
            continue
        if len(fields) <= tag_column:
            raise ValueError(
                f"{path}:{number}: expected at least {tag_column + 1} columns (tags in column "
                f"{tag_column + 1}), got {len(fields)}: {fields!r}"
            )
        current.append((fields[word_column], fields[tag_column], number))
    if current:
        sentences.append(current)
    return sentences


_TAG = re.compile(r"^(O|[BI]-\S+)$")


def _is_comment(line: str) -> bool:
    """A CoNLL-U style comment line (`# sent_id = ...`, `# text = ...`)."""
    return line.startswith("#") and "=" in line and "\t" not in line


def _columns(path: Union[str, Path], rows: Sequence[List[str]]) -> Tuple[int, int]:
    """(word column, tag column) of a column file's data rows: the word is
    the second column when the first holds the indices 1, 2, ... of a
    sentence's tokens, else the first; the tags are in the last column
    (among those all rows have) whose every value is a tag, else the last."""
    if not rows:
        return 0, 1
    width = min(len(fields) for fields in rows)
    indexed = width >= 3 and all(fields[0].isdigit() for fields in rows)
    word_column = 1 if indexed else 0
    tag_columns = [
        column for column in range(word_column + 1, width)
        if all(_TAG.match(fields[column]) for fields in rows)
    ]
    if tag_columns:
        return word_column, tag_columns[-1]
    # no column of tags only: the last column, whose bad tags sentence_to_doc names
    return word_column, width - 1


def sentence_to_doc(vocab: Vocab, sentence: Sentence, where: str = "") -> Doc:
    """A Doc with the sentence's words and its entities (from BIO/IOB tags).
    where: named in the error for a bad tag (e.g. "file.txt:12")."""
    words = [word for word, _ in sentence]
    tags = [_normalise_tag(tag, where) for _, tag in sentence]
    doc = Doc(vocab, words=words)
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(tags))
    return doc


def numbered_sentence_to_doc(vocab: Vocab, sentence: NumberedSentence, path: Union[str, Path]) -> Doc:
    """sentence_to_doc for a sentence of read_numbered_columns: a bad tag is
    named with its file and line."""
    for word, tag, number in sentence:
        _normalise_tag(tag, f"{path}:{number}")
    return sentence_to_doc(vocab, [(word, tag) for word, tag, _ in sentence])


def _normalise_tag(tag: str, where: str = "") -> str:
    if _TAG.match(tag):
        return tag
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}not a BIO/IOB tag: {tag!r} (expected O, B-TYPE or I-TYPE)")


def read_conllu(path: Union[str, Path]) -> List[Doc]:
    """One Doc per sentence of a CoNLL-U file (words, UPOS, XPOS, morphology,
    lemmas, dependencies), through spaCy's conllu converter (as
    `spacy convert --converter conllu -n 1`)."""
    try:
        text = Path(path).read_text(encoding="utf8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not utf8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#") and len(line.rstrip("\r").split("\t")) != 10:
            raise ValueError(
                f"{path}:{number}: a CoNLL-U token line has 10 tab-separated fields; got {line[:80]!r}"
            )
    try:
        return list(conllu_to_docs(text, n_sents=1, no_print=True))
    except (ValueError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: not a CoNLL-U file ({error})") from None


def read_corpus(path: Union[str, Path], vocab: Vocab, file_format: Optional[str] = None) -> List[Doc]:
    """Docs from a CoNLL-U file (format "conllu", or a .conllu suffix) or a
    BIO / IOB column file (any other)."""
    file_format = file_format or ("conllu" if str(path).endswith(".conllu") else "bio")
    if file_format == "conllu":
        return read_conllu(path)
    if file_format not in COLUMN_FORMATS:
        raise ValueError(f"unknown format {file_format!r}; use conllu, bio or iob")
    return [numbered_sentence_to_doc(vocab, sentence, path) for sentence in read_numbered_columns(path)]


def split_docs(docs: Sequence[Doc], dev_share: float, seed: int = 0) -> Tuple[List[Doc], List[Doc]]:
    """(train, dev): a fixed-seed random share of the docs for dev, the rest
    for train, each in the original order."""
    if not 0.0 < dev_share < 1.0:
        raise ValueError(f"dev_share must be in (0, 1); got {dev_share}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(len(docs) * dev_share))
    dev_index = set(order[:n_dev])
    train = [doc for i, doc in enumerate(docs) if i not in dev_index]
    dev = [doc for i, doc in enumerate(docs) if i in dev_index]
    return train, dev


def write_docbin(docs: Iterable[Doc], path: Union[str, Path]) -> int:
    """Save docs as .spacy (creating folders); returns the number of docs."""
    docbin = DocBin(docs=list(docs), store_user_data=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docbin.to_disk(path)
    return len(docbin)
