"""Corpus file formats of `annotate`: JSONL and .spacy in, JSONL and .spacy out.

JSONL (`.jsonl`, `.ndjson`): one JSON object per line with a "text" field;
its other fields are carried through as "meta". An output line holds "text",
"meta", "tokens" (per token: "text", "start", "end", the task's label
attributes and "exit_layer"), "ents" and "early_exit". `.spacy`: a DocBin
stored with user data. `Writer` writes to a temporary file next to the
target, renamed when complete (resume.py has the resumable JSONL writer).
"""
import itertools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy
from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DOCBIN_SUFFIXES = (".spacy",)
META_KEY = "meta"

PathLike = Union[str, Path]
Record = Tuple[Union[str, Doc], Dict[str, Any]]


class AnnotateInputError(ValueError):
    """Bad input: missing file, unknown format, invalid line."""


def file_format(path: PathLike) -> str:
    """The format of `path` by its extension: "jsonl" or "spacy" (else AnnotateInputError)."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in DOCBIN_SUFFIXES:
        return "spacy"
    known = ", ".join(JSONL_SUFFIXES + DOCBIN_SUFFIXES)
    raise AnnotateInputError(f"{path}: unknown format {suffix or '(no extension)'!r}; use one of {known}")


def read_jsonl(path: PathLike) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(text, meta) per non-blank line of a JSONL file, read lazily. Raises
    AnnotateInputError naming the file and line for invalid UTF-8 or JSON, a
    line that is not an object, or a missing or non-string "text"."""
    for text, meta, _, _ in read_jsonl_from(path):
        yield text, meta


def read_jsonl_from(path: PathLike, offset: int = 0, line: int = 0) -> Iterator[Tuple[str, Dict[str, Any], int, int]]:
    """As read_jsonl, from byte `offset` (the start of line `line` + 1), and
    with where the input continues after each record: (text, meta, byte
    offset after its line, its line number)."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        for number, raw in enumerate(stream, start=line + 1):
            offset += len(raw)
            where = f"{path}, line {number}"
            try:
                decoded = raw.decode("utf-8-sig" if number == 1 else "utf8")
            except UnicodeDecodeError as error:
                raise AnnotateInputError(f"{where}: not UTF-8 ({error.reason})") from None
            if not decoded.strip():
                continue
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError as error:
                raise AnnotateInputError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise AnnotateInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if "text" not in record:
                raise AnnotateInputError(f"{where}: no \"text\" field (fields: {', '.join(record) or 'none'})")
            text = record.pop("text")
            if not isinstance(text, str):
                raise AnnotateInputError(f"{where}: \"text\" must be a string, got {type(text).__name__}")
            yield text, record, offset, number


def read_docbin(path: PathLike, vocab: Vocab) -> Tuple[int, Iterator[Doc]]:
    """(number of docs, docs) of a .spacy file (its docs are built lazily)."""
    try:
        docbin = DocBin(store_user_data=True).from_disk(path)
    except ValueError as error:
        raise AnnotateInputError(f"{path}: not a readable .spacy (DocBin) file ({error})") from None
    return len(docbin), docbin.get_docs(vocab)



def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (JSON-serializable, same value)."""
    return value.item() if isinstance(value, numpy.generic) else value


def doc_record(doc: Doc, attrs: Sequence[str], meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The JSONL output object of an annotated doc (see the module docstring);
    `attrs`: token label attributes to include, e.g. ("ent_iob", "ent_type")."""
    tokens = []
    for token in doc:
        item: Dict[str, Any] = {"text": token.text, "start": token.idx, "end": token.idx + len(token)}
        for attr in attrs:
            item[attr] = getattr(token, f"{attr}_")
        item["exit_layer"] = token._.exit_layer
        tokens.append(item)
    summary = doc._.early_exit
    return {
        "text": doc.text,
        "meta": meta if meta is not None else doc.user_data.get(META_KEY, {}),
        "tokens": tokens,
        "ents": [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents],
        "early_exit": {key: _plain(value) for key, value in summary.items()} if summary else None,
    }


def doc_json_line(doc: Doc, attrs: Sequence[str], meta: Optional[Dict[str, Any]] = None) -> str:
    """doc_record as one line of JSON (with its newline)."""
    return json.dumps(doc_record(doc, attrs, meta), ensure_ascii=False) + "\n"


def _with_meta(doc: Doc, meta: Dict[str, Any]) -> Doc:
    if meta:
        doc.user_data[META_KEY] = meta
    return doc


class Writer:
    """Writes annotated docs (or serialized batches from Ray actors) to a
    temporary file next to `path`; commit() renames it to `path`. Not
    resumable (resume.ResumableJsonlWriter is, for JSONL): it always starts
    at the first doc, and checkpoint() does nothing."""

    start_docs = start_tokens = input_offset = input_line = 0

    def __init__(self, path: Path, output_format: str, attrs: Sequence[str]) -> None:
        self.path = path
        self.format = output_format
        self.attrs = attrs
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        self.temporary = Path(temporary)
        self.stream = os.fdopen(handle, "w", encoding="utf8", newline="") if output_format == "jsonl" else os.fdopen(handle, "wb")
        self.docbin = DocBin(store_user_data=True) if output_format == "spacy" else None
        self.n_docs = self.n_tokens = 0

    def add(self, doc: Doc, meta: Dict[str, Any], input_offset: int = 0, input_line: int = 0) -> None:
        self.n_docs += 1
        self.n_tokens += len(doc)
        if self.docbin is None:
            self.stream.write(doc_json_line(doc, self.attrs, meta))
        else:
            self.docbin.add(_with_meta(doc, meta))

    def add_serialized(self, payload: bytes, n_docs: int = 0, n_tokens: int = 0, input_offset: int = 0,
                       input_line: int = 0) -> None:
        """A batch of `n_docs` docs as serialize_batch() made it."""
        self.n_docs += n_docs
        self.n_tokens += n_tokens
        if self.docbin is None:
            self.stream.write(payload.decode("utf8"))
        else:
            self.docbin.merge(DocBin(store_user_data=True).from_bytes(payload))

    def checkpoint(self) -> None:
        pass

    def commit(self) -> None:
        if self.docbin is not None:
            self.stream.write(self.docbin.to_bytes())
        self.stream.close()
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self.stream.close()
        self.temporary.unlink(missing_ok=True)


@contextmanager
def open_writer(path: Path, attrs: Sequence[str]) -> Iterator[Writer]:
    writer = Writer(path, file_format(path), attrs)
    try:
        yield writer
    except BaseException:
        writer.discard()
        raise
    writer.commit()


def serialize_batch(docs: Sequence[Doc], metas: Sequence[Dict[str, Any]], output_format: str,
                    attrs: Sequence[str]) -> bytes:
    """Annotated docs as JSONL lines (UTF-8) or DocBin bytes (with user data)."""
    if output_format == "jsonl":
        return "".join(doc_json_line(doc, attrs, meta) for doc, meta in zip(docs, metas)).encode("utf8")
    docbin = DocBin(store_user_data=True)
    for doc, meta in zip(docs, metas):
        docbin.add(_with_meta(doc, meta))
    return docbin.to_bytes()


def input_records(input_path: Path, vocab: Vocab, start_docs: int = 0, start_offset: int = 0,
                  start_line: int = 0) -> Tuple[Optional[int], Iterator[Tuple[Union[str, Doc], Tuple[Dict[str, Any], int, int]]]]:
    """(number of docs if known, records) of an input file, from doc
    `start_docs` on (JSONL: from byte `start_offset`, the start of line
    `start_line` + 1). A record is (text or Doc, (meta, offset, line)):
    where the input continues after it (JSONL: byte offset and line number;
    .spacy: 0, 0)."""
    if file_format(input_path) == "jsonl":
        lines = read_jsonl_from(input_path, start_offset, start_line)
        return None, ((text, (meta, offset, line)) for text, meta, offset, line in lines)
    total, docs = read_docbin(input_path, vocab)
    docs = itertools.islice(docs, start_docs, None)
    return total, ((doc, (doc.user_data.get(META_KEY, {}), 0, 0)) for doc in docs)
