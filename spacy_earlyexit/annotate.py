"""Annotate a corpus with a saved pipeline, in one process or on a Ray cluster.

    from spacy_earlyexit.annotate import annotate
    annotate("training/model-best", "tweets.jsonl", "tweets.annotated.jsonl")
    annotate("training/model-best", "big.jsonl", "big.spacy", engine="ray", workers=8,
             exit_overrides={"threshold": 0.2})

Formats, chosen by file extension:

- JSONL (`.jsonl`, `.ndjson`): one JSON object per line with a "text" field;
  its other fields are carried through as "meta". An output line holds
  "text", "meta", "tokens" (per token: "text", "start", "end" (character
  offsets), the label attributes of the pipeline's tasks ("tag", "pos",
  "ent_iob", "ent_type") and "exit_layer"), "ents" ([start_char, end_char,
  label]) and "early_exit" (doc._.early_exit).
- `.spacy` (spaCy's DocBin, stored with user data so token._.exit_layer and
  doc._.early_exit survive). Input docs keep their tokenization. JSONL meta
  goes to and comes from doc.user_data["meta"].

The local engine streams: it reads lines lazily and writes as it goes (a
DocBin can be neither read nor written in parts, so `.spacy` input and output
are held in memory in DocBin's compact form). Output is written to a
temporary file next to OUTPUT and renamed when complete.

The Ray engine (`pip install spacy-earlyexit[ray]`, see ray_engine.py) reads
the input in the driver into Ray's object store, runs Ray Data `map_batches`
with a pool of `workers` actors, each loading the pipeline once and annotating
with `threads` torch threads, and writes their serialized results in input
order.

The pipeline's saved exit settings are used unless `exit_overrides` (e.g.
{"threshold": 0.2}) are given; they go to every `earlyexit_tagger` component
through nlp.pipe's component_cfg, for this run only.
"""
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.util import load_config
from spacy.vocab import Vocab
from tqdm import tqdm

from .model import ExitSettings

FACTORY = "earlyexit_tagger"
ENGINES = ("local", "ray")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DOCBIN_SUFFIXES = (".spacy",)
META_KEY = "meta"
#: token label attributes written to JSONL, per task
TASK_ATTRS: Dict[str, Tuple[str, ...]] = {
    "ner": ("ent_iob", "ent_type"),
    "tag": ("tag",),
    "pos": ("pos",),
    "segment": (),
}

PathLike = Union[str, Path]
Record = Tuple[Union[str, Doc], Dict[str, Any]]


class AnnotateInputError(ValueError):
    """Bad input: missing file, unknown format, invalid line."""


@dataclass
class AnnotateResult:
    """What a run did: docs and tokens written, wall-clock seconds (pipeline
    loading included), and where."""

    engine: str
    n_docs: int
    n_tokens: int
    seconds: float
    output: Path


# --- formats ------------------------------------------------------------------------


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
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf8")
            except UnicodeDecodeError as error:
                raise AnnotateInputError(f"{where}: not UTF-8 ({error.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise AnnotateInputError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise AnnotateInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if "text" not in record:
                raise AnnotateInputError(f"{where}: no \"text\" field (fields: {', '.join(record) or 'none'})")
            text = record.pop("text")
            if not isinstance(text, str):
                raise AnnotateInputError(f"{where}: \"text\" must be a string, got {type(text).__name__}")
            yield text, record


def read_docbin(path: PathLike, vocab: Vocab) -> Tuple[int, Iterator[Doc]]:
    """(number of docs, docs) of a .spacy file (its docs are built lazily)."""
    try:
        docbin = DocBin(store_user_data=True).from_disk(path)
    except ValueError as error:
        raise AnnotateInputError(f"{path}: not a readable .spacy (DocBin) file ({error})") from None
    return len(docbin), docbin.get_docs(vocab)


def label_attrs(nlp: Language) -> Tuple[str, ...]:
    """The token attributes the pipeline's early-exit components label."""
    attrs: List[str] = []
    for name in tagger_names(nlp):
        for attr in TASK_ATTRS.get(nlp.get_pipe(name).cfg["task"], ()):
            if attr not in attrs:
                attrs.append(attr)
    return tuple(attrs)


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


class _Writer:
    """Writes annotated docs (or serialized batches from Ray actors) to a
    temporary file next to `path`; commit() renames it to `path`."""

    def __init__(self, path: Path, output_format: str, attrs: Sequence[str]) -> None:
        self.path = path
        self.format = output_format
        self.attrs = attrs
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        self.temporary = Path(temporary)
        self.stream = os.fdopen(handle, "w", encoding="utf8", newline="") if output_format == "jsonl" else os.fdopen(handle, "wb")
        self.docbin = DocBin(store_user_data=True) if output_format == "spacy" else None

    def add(self, doc: Doc, meta: Dict[str, Any]) -> None:
        if self.docbin is None:
            self.stream.write(doc_json_line(doc, self.attrs, meta))
        else:
            self.docbin.add(_with_meta(doc, meta))

    def add_serialized(self, payload: bytes) -> None:
        """A batch as serialize_batch() made it."""
        if self.docbin is None:
            self.stream.write(payload.decode("utf8"))
        else:
            self.docbin.merge(DocBin(store_user_data=True).from_bytes(payload))

    def commit(self) -> None:
        if self.docbin is not None:
            self.stream.write(self.docbin.to_bytes())
        self.stream.close()
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self.stream.close()
        self.temporary.unlink(missing_ok=True)


@contextmanager
def _open_writer(path: Path, attrs: Sequence[str]) -> Iterator[_Writer]:
    writer = _Writer(path, file_format(path), attrs)
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


# --- pipeline and settings --------------------------------------------------------


def tagger_names(nlp: Language) -> List[str]:
    """Names of the pipeline's components made by the earlyexit_tagger factory."""
    return [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == FACTORY]


def _config_tagger_names(pipeline: Path) -> List[str]:
    config = load_config(pipeline / "config.cfg")
    components = config.get("components", {})
    return [name for name in config["nlp"]["pipeline"] if components.get(name, {}).get("factory") == FACTORY]


def validate_overrides(overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The per-call exit settings, checked (names and values): ValueError naming the setting."""
    overrides = dict(overrides or {})
    ExitSettings().updated(**overrides)
    return overrides


def component_cfg(names: Sequence[str], overrides: Dict[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
    """nlp.pipe's component_cfg giving `overrides` to every named component."""
    return {name: dict(overrides) for name in names} if overrides else None


def _check_paths(pipeline: Optional[PathLike], input_path: Path, output_path: Path) -> None:
    file_format(input_path)
    file_format(output_path)
    if not input_path.is_file():
        raise AnnotateInputError(f"{input_path}: no such file")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise AnnotateInputError(f"{output_path}: the output would overwrite the input")
    if pipeline is not None and not (Path(pipeline) / "config.cfg").is_file():
        raise AnnotateInputError(f"{pipeline}: not a saved spaCy pipeline folder (no config.cfg)")
    output_path.parent.mkdir(parents=True, exist_ok=True)


def _progress(total: Optional[int], enabled: bool, engine: str) -> tqdm:
    return tqdm(total=total, unit="doc", desc=f"annotate ({engine})", file=sys.stderr, disable=not enabled)


# --- engines ------------------------------------------------------------------------


def annotate(
    pipeline: Union[PathLike, Language],
    input_path: PathLike,
    output_path: PathLike,
    *,
    engine: str = "local",
    batch_size: int = 1024,
    workers: int = 2,
    threads: Optional[int] = None,
    exit_overrides: Optional[Dict[str, Any]] = None,
    address: Optional[str] = None,
    ship_pipeline: Optional[bool] = None,
    progress: bool = True,
) -> AnnotateResult:
    """Annotate INPUT into OUTPUT (formats by extension, see the module docstring).

    pipeline: a saved pipeline folder (a loaded Language with the local engine too).
    engine: "local" (this process) or "ray".
    batch_size: docs per nlp.pipe batch (and per Ray batch).
    workers: Ray actors, each loading the pipeline once (ray only).
    threads: torch threads of the annotating process (local; default: torch's
        setting) or of each Ray actor (default 1).
    exit_overrides: exit settings for this run, e.g. {"exit_mode": "token",
        "threshold": 0.2}; default: the pipeline's saved settings.
    address: Ray cluster to connect to ("auto", "ray://host:10001"); default:
        an already initialized Ray, else a local one with workers x threads CPUs.
    ship_pipeline: send the pipeline's files to the actors through the object
        store (for clusters whose nodes cannot read the folder); default: only
        when `address` is given.
    progress: a tqdm bar of docs on stderr.
    """
    if engine == "local":
        return annotate_local(pipeline, input_path, output_path, batch_size=batch_size, threads=threads,
                              exit_overrides=exit_overrides, progress=progress)
    if engine == "ray":
        if isinstance(pipeline, Language):
            raise ValueError("the ray engine loads the pipeline in its workers: give a saved pipeline folder")
        from .ray_engine import annotate_ray

        return annotate_ray(pipeline, input_path, output_path, batch_size=batch_size, workers=workers,
                            threads=1 if threads is None else threads, exit_overrides=exit_overrides,
                            address=address, ship_pipeline=ship_pipeline, progress=progress)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")


def _check_positive(**values: Optional[int]) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def _input_records(input_path: Path, vocab: Vocab) -> Tuple[Optional[int], Iterator[Record]]:
    if file_format(input_path) == "jsonl":
        return None, read_jsonl(input_path)
    total, docs = read_docbin(input_path, vocab)
    return total, ((doc, doc.user_data.get(META_KEY, {})) for doc in docs)


def annotate_local(
    pipeline: Union[PathLike, Language],
    input_path: PathLike,
    output_path: PathLike,
    *,
    batch_size: int = 1024,
    threads: Optional[int] = None,
    exit_overrides: Optional[Dict[str, Any]] = None,
    progress: bool = True,
) -> AnnotateResult:
    """Annotate in this process with nlp.pipe (arguments as in annotate())."""
    start = time.perf_counter()
    _check_positive(batch_size=batch_size, threads=threads)
    overrides = validate_overrides(exit_overrides)
    input_path, output_path = Path(input_path), Path(output_path)
    _check_paths(None if isinstance(pipeline, Language) else pipeline, input_path, output_path)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        nlp = pipeline if isinstance(pipeline, Language) else spacy.load(pipeline)
        names = tagger_names(nlp)
        if not names:
            raise ValueError(f"the pipeline has no {FACTORY} component (components: {', '.join(nlp.pipe_names)})")
        total, records = _input_records(input_path, nlp.vocab)
        n_docs = n_tokens = 0
        with _open_writer(output_path, label_attrs(nlp)) as writer, _progress(total, progress, "local") as bar:
            annotated = nlp.pipe(records, as_tuples=True, batch_size=batch_size,
                                 component_cfg=component_cfg(names, overrides))
            for doc, meta in annotated:
                writer.add(doc, meta)
                n_docs += 1
                n_tokens += len(doc)
                bar.update(1)
    finally:
        torch.set_num_threads(previous_threads)
    return AnnotateResult("local", n_docs, n_tokens, time.perf_counter() - start, output_path)
