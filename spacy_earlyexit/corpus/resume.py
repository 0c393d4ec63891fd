"""Interrupted `annotate` runs and how they continue (`--resume`).

JSONL output is written to OUTPUT.partial next to OUTPUT and renamed to
OUTPUT when complete; nothing ever appears under OUTPUT before that. Next to
the partial, OUTPUT.partial.json records a checkpoint at the end of a batch of
docs, at most every CHECKPOINT_SECONDS (`ResumableJsonlWriter.checkpoint`): the partial is flushed and fsynced
first, then the state is written to a temporary file, fsynced and renamed
over the old one, so the state never counts bytes the partial does not hold.
The state holds:

- the input as far as it was consumed: "input_docs", "input_offset" and
  "input_line" (JSONL: the byte offset and line number after the last doc
  written) and "input_sha256", the SHA-256 of the input's first
  "input_hashed_bytes" bytes (JSONL: up to "input_offset", hashed while the
  run goes, one more sequential read of the input; .spacy input: the whole
  file, which is read whole anyway). A resumed run hashes the same prefix of
  the input it is given and refuses on any difference; appending to a JSONL
  input is fine (the prefix is all the written docs depend on);
- "pipeline_sha256" (every file of the pipeline folder, or nlp.to_bytes()),
  "exit_overrides", "precision" (as asked for: None for the saved one) and
  "package_version": a resumed run must use the same;
- "docs", "tokens" and "output_bytes" of the partial at the checkpoint.

On resume the partial is truncated to "output_bytes" (what a kill in the
middle of a line, or docs written after the checkpoint, left behind is cut)
and the input is read from "input_offset" (.spacy input: the first
"input_docs" docs are skipped). Docs do not depend on their batch neighbours,
so the resumed output is byte for byte an uninterrupted run's.

What happens to the partial: a clean finish renames it; an error (bad input,
a failing pipeline) deletes it with its state, as before; an interruption
keeps it: SIGTERM (handled: the run stops after the doc being written,
records a final checkpoint and raises AnnotateInterrupted), SIGKILL or a
crash (the last checkpoint stands), KeyboardInterrupt (the last checkpoint
stands). A run without resume starts over and replaces any partial. Two
runs writing the same OUTPUT at once are refused (an flock on the partial).

`.spacy` output cannot be resumed: a DocBin is one compressed block written
at the end, and its string table is a set whose order varies between
processes, so even two complete runs differ in bytes. `--resume` with a
.spacy output is refused with that reason.
"""
import fcntl
import hashlib
import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

from spacy.language import Language
from spacy.tokens import Doc

from .formats import PathLike, doc_json_line, file_format, open_writer

STATE_VERSION = 1
#: least seconds between two checkpoints (taken at the end of a batch): a
#: checkpoint costs two fsyncs and a rename, too much to take after every
#: small batch; a kill loses at most this long and one batch of work
CHECKPOINT_SECONDS = 5.0
HASH_CHUNK_BYTES = 1 << 20


class ResumeError(ValueError):
    """A partial output that cannot be continued, with the reason."""


class AnnotateInterrupted(RuntimeError):
    """The run stopped on SIGTERM after a checkpoint; the partial is kept."""

    def __init__(self, message: str, n_docs: int, partial: Optional[Path]) -> None:
        super().__init__(message)
        self.n_docs = n_docs
        self.partial = partial


def partial_paths(output_path: Path) -> "tuple[Path, Path]":
    """(OUTPUT.partial, OUTPUT.partial.json)."""
    partial = output_path.with_name(output_path.name + ".partial")
    return partial, partial.with_name(partial.name + ".json")


def pipeline_sha256(pipeline: Union[PathLike, Language]) -> str:
    """SHA-256 of a pipeline: of every file in its folder (relative paths and
    contents, in sorted order), or of nlp.to_bytes() for a loaded one."""
    digest = hashlib.sha256()
    if isinstance(pipeline, Language):
        digest.update(pipeline.to_bytes())
        return digest.hexdigest()
    folder = Path(pipeline)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode("utf8") + b"\0")
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    return digest.hexdigest()


class InputHasher:
    """SHA-256 of the first bytes of a file, extended on demand (reads the
    file sequentially with its own handle)."""

    def __init__(self, path: Path) -> None:
        self.stream = open(path, "rb")
        self.digest = hashlib.sha256()
        self.hashed_bytes = 0

    def advance(self, offset: int) -> None:
        """Hash up to byte `offset` (ResumeError if the file is shorter)."""
        while self.hashed_bytes < offset:
            chunk = self.stream.read(min(HASH_CHUNK_BYTES, offset - self.hashed_bytes))
            if not chunk:
                raise ResumeError(f"{self.stream.name}: the input is shorter ({self.hashed_bytes} bytes) than "
                                  f"the {offset} bytes a previous run had read: it is not the same input")
            self.digest.update(chunk)
            self.hashed_bytes += len(chunk)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.stream.close()


class ResumableJsonlWriter:
    """Writes JSONL output to OUTPUT.partial with checkpoints in
    OUTPUT.partial.json (see the module docstring).

    output_path: the final output (.jsonl).
    input_path: the input; JSONL inputs are hashed up to the last doc written,
        other inputs whole.
    attrs: token label attributes of the JSONL records.
    settings: what the output depends on besides the input
        ({"pipeline_sha256", "exit_overrides", "precision", "package_version"}).
    resume: continue from an existing partial (if there is none: start over).
    After construction, `start_docs`, `start_tokens`, `input_offset` and
    `input_line` say where the run starts.
    """

    def __init__(self, output_path: Path, input_path: Path, attrs: Sequence[str], settings: Dict[str, Any],
                 resume: bool) -> None:
        self.path = output_path
        self.partial, self.state_path = partial_paths(output_path)
        self.attrs = attrs
        self.settings = settings
        self.input_path = input_path
        self.input_is_jsonl = file_format(input_path) == "jsonl"
        handle = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise ResumeError(f"{self.partial}: another annotate run is writing {output_path}") from None
        self.stream = os.fdopen(handle, "r+b")
        self.hasher = InputHasher(input_path)
        try:
            state = self._read_state() if resume else None
            if state is None:
                self.stream.truncate(0)
                self.n_docs = self.n_tokens = self.output_bytes = 0
                self.input_offset = self.input_line = 0
            else:
                self._check_and_restore(state)
            if not self.input_is_jsonl:
                self.hasher.advance(input_path.stat().st_size)
            self.stream.seek(self.output_bytes)
            self.start_docs, self.start_tokens = self.n_docs, self.n_tokens
            self.checkpoint()
        except BaseException:
            self.hasher.close()
            self.stream.close()
            raise

    def _read_state(self) -> Optional[Dict[str, Any]]:
        if not self.state_path.exists():
            if os.fstat(self.stream.fileno()).st_size > 0:
                raise ResumeError(f"{self.partial}: no {self.state_path.name} next to it, so where it stopped "
                                  "is unknown; run without --resume to start over")
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf8"))
        except (OSError, ValueError) as error:
            raise ResumeError(f"{self.state_path}: unreadable ({error}); run without --resume to start over") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ResumeError(f"{self.state_path}: not a state this version writes; run without --resume")
        return state

    def _check_and_restore(self, state: Dict[str, Any]) -> None:
        hint = "run without --resume to start over"
        names = {"exit_overrides": "exit settings", "pipeline_sha256": "pipeline (SHA-256 of its files)",
                 "precision": "precision", "package_version": "spacy-earlyexit version"}
        for key, name in names.items():
            if state.get(key) != self.settings[key]:
                raise ResumeError(f"cannot resume {self.partial}: it was written with another {name} "
                                  f"({state.get(key)!r}, now {self.settings[key]!r}); {hint}")
        if state.get("input_jsonl") != self.input_is_jsonl:
            raise ResumeError(f"cannot resume {self.partial}: it was written from an input of another format; {hint}")
        if not self.input_is_jsonl and state["input_hashed_bytes"] != self.input_path.stat().st_size:
            raise ResumeError(f"cannot resume {self.partial}: {self.input_path} has changed size since; {hint}")
        self.hasher.advance(state["input_hashed_bytes"])
        if self.hasher.hexdigest() != state["input_sha256"]:
            raise ResumeError(f"cannot resume {self.partial}: {self.input_path} differs from the input it was "
                              f"written from (SHA-256 of its first {state['input_hashed_bytes']} bytes); {hint}")
        size = os.fstat(self.stream.fileno()).st_size
        if size < state["output_bytes"]:
            raise ResumeError(f"cannot resume {self.partial}: it holds {size} bytes, fewer than the "
                              f"{state['output_bytes']} its state records; {hint}")
        self.stream.truncate(state["output_bytes"])  # a line cut by a kill, docs after the checkpoint
        self.n_docs, self.n_tokens, self.output_bytes = state["docs"], state["tokens"], state["output_bytes"]
        self.input_offset, self.input_line = state["input_offset"], state["input_line"]

    def add(self, doc: Doc, meta: Dict[str, Any], input_offset: int, input_line: int) -> None:
        """Write one annotated doc; input_offset / input_line: where the input
        continues after it (JSONL: byte offset and line number; else 0, 0)."""
        self.add_serialized(doc_json_line(doc, self.attrs, meta).encode("utf8"), 1, len(doc), input_offset,
                            input_line)

    def add_serialized(self, payload: bytes, n_docs: int, n_tokens: int, input_offset: int,
                       input_line: int) -> None:
        """Write `n_docs` docs as JSONL lines (formats.serialize_batch's bytes)."""
        self.stream.write(payload)
        self.output_bytes += len(payload)
        self.n_docs += n_docs
        self.n_tokens += n_tokens
        self.input_offset, self.input_line = input_offset, input_line

    def checkpoint(self) -> None:
        """Make everything written so far durable and record it as the state."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        if self.input_is_jsonl:
            self.hasher.advance(self.input_offset)
        state = {
            "version": STATE_VERSION, "input": str(self.input_path), "input_jsonl": self.input_is_jsonl,
            "input_docs": self.n_docs, "input_offset": self.input_offset, "input_line": self.input_line,
            "input_hashed_bytes": self.hasher.hashed_bytes, "input_sha256": self.hasher.hexdigest(),
            **self.settings, "docs": self.n_docs, "tokens": self.n_tokens, "output_bytes": self.output_bytes,
        }
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(temporary, "w", encoding="utf8") as stream:
            json.dump(state, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.state_path)

    def commit(self) -> None:
        """The output is complete: rename the partial to OUTPUT, drop the state."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        os.replace(self.partial, self.path)
        self.state_path.unlink(missing_ok=True)
        self.close()

    def discard(self) -> None:
        self.state_path.unlink(missing_ok=True)
        self.partial.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        self.hasher.close()
        self.stream.close()  # releases the lock


@contextmanager
def open_resumable(output_path: Path, input_path: Path, attrs: Sequence[str], settings: Dict[str, Any],
                   resume: bool) -> Iterator[ResumableJsonlWriter]:
    """A ResumableJsonlWriter, committed at the end; an error deletes the
    partial, an interruption (AnnotateInterrupted, KeyboardInterrupt) keeps
    it as of its last checkpoint."""
    writer = ResumableJsonlWriter(output_path, input_path, attrs, settings, resume)
    try:
        yield writer
    except (AnnotateInterrupted, KeyboardInterrupt):
        writer.close()
        raise
    except BaseException:
        writer.discard()
        raise
    writer.commit()


class StopRequest:
    """Set by SIGTERM while `stop_on_sigterm` is active."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "no signal"


@contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """While active (main thread only; elsewhere nothing is installed), SIGTERM
    only sets the returned StopRequest: the caller stops at a clean point."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(number: int, frame: Any) -> None:
        request.signal = number

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_settings(
    pipeline: Union[PathLike, Language], exit_overrides: Dict[str, Any], precision: Optional[str] = None
) -> Dict[str, Any]:
    """What a partial output depends on besides its input (see the module docstring)."""
    from .. import __version__

    return {"pipeline_sha256": pipeline_sha256(pipeline), "exit_overrides": dict(exit_overrides),
            "precision": precision, "package_version": __version__}


def check_resumable(output_path: Path, resume: bool) -> None:
    """ResumeError if `resume` is asked for an output that cannot be resumed (.spacy)."""
    if resume and file_format(output_path) != "jsonl":
        raise ResumeError(f"{output_path}: --resume needs JSONL output; a .spacy DocBin is written whole at "
                          "the end, so an interrupted run leaves nothing to continue (annotate to .jsonl, "
                          "or run without --resume)")


def interrupted(reason: str, writer: Any) -> AnnotateInterrupted:
    """The AnnotateInterrupted to raise when a run stops early for `reason`
    ("SIGTERM", "the Ray job failed (...)") after its last checkpoint."""
    if isinstance(writer, ResumableJsonlWriter):
        return AnnotateInterrupted(f"interrupted by {reason} after {writer.n_docs} docs; {writer.partial} kept: "
                                   "run again with --resume to continue", writer.n_docs, writer.partial)
    return AnnotateInterrupted(f"interrupted by {reason} after {writer.n_docs} docs; nothing kept (a .spacy "
                               "output cannot be resumed)", writer.n_docs, None)


def open_output(output_path: Path, input_path: Path, attrs: Sequence[str], pipeline: Union[PathLike, Language],
                exit_overrides: Dict[str, Any], resume: bool, precision: Optional[str] = None):
    """The writer for OUTPUT: resumable for JSONL (open_resumable); for .spacy
    formats.open_writer, and `resume` is refused (ResumeError)."""
    check_resumable(output_path, resume)
    if file_format(output_path) != "jsonl":
        return open_writer(output_path, attrs)
    settings = run_settings(pipeline, exit_overrides, precision)
    return open_resumable(output_path, input_path, attrs, settings, resume)
