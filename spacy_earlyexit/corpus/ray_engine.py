"""The Ray engine of spacy_earlyexit.corpus.annotate: Ray Data `map_batches` with a
pool of actors, each loading the saved pipeline once.

The driver reads the input (JSONL lines or .spacy docs, checked as in the
local engine) one batch at a time into Arrow tables in Ray's object store
(which spills to disk; the driver holds one batch), each row carrying its
index; then the actors annotate a batch each with nlp.pipe and return it
serialized (JSONL lines or DocBin bytes), and the driver writes the batches
as they come, in input order (Ray Data's preserve_order, checked with the
indices).
Ray is imported only here and only when the engine runs: the package works
without it.
"""
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
import torch
from spacy.tokens import Doc
from spacy.vocab import Vocab

from ..pipeline.load import load, tagger_names_in_config
from .formats import META_KEY, PathLike, file_format, input_records, serialize_batch
from .job import (
    FACTORY, AnnotateResult, check_paths, check_positive, component_cfg, label_attrs,
    progress_bar, tagger_names, validate_overrides,
)
from .resume import CHECKPOINT_SECONDS, check_resumable, interrupted, open_output, stop_on_sigterm

RAY_INSTALL_HINT = "the ray engine needs Ray Data: pip install spacy-earlyexit[ray]"
#: restarts of a dead actor, retries of a batch whose actor died (Ray Data's
#: defaults are unbounded: a batch that kills its actor every time, e.g. by
#: running out of memory, would be retried forever)
ACTOR_MAX_RESTARTS = 3
TASK_MAX_RETRIES = 3


class RayAnnotator:
    """The Ray Data callable class: loads the pipeline once per actor and turns
    a batch of input rows into one row of serialized annotations.

    pipeline: a folder every node can read, or an ObjectRef of the folder's
        files ({relative path: bytes}) written to a temporary folder first.
    Input rows: "index" and either "text" + "meta" (JSON) or "doc" (Doc bytes).
    Output row: "index" (of the batch's first doc), "n_docs", "n_tokens" and
    "payload" (serialize_batch's bytes).
    """

    def __init__(
        self, pipeline: Any, exit_overrides: Dict[str, Any], output_format: str, threads: int,
        precision: Optional[str] = None,
    ) -> None:
        torch.set_num_threads(threads)
        if isinstance(pipeline, str):
            self.nlp = load(pipeline, precision=precision)
        else:
            import ray

            with tempfile.TemporaryDirectory() as folder:
                for relative, data in ray.get(pipeline).items():
                    target = Path(folder) / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                self.nlp = load(folder, precision=precision)
        self.component_cfg = component_cfg(tagger_names(self.nlp), exit_overrides)
        self.attrs = label_attrs(self.nlp)
        self.output_format = output_format

    def __call__(self, batch: Dict[str, numpy.ndarray]) -> Dict[str, numpy.ndarray]:
        indices = batch["index"]
        first = int(indices[0])
        if not numpy.array_equal(indices, numpy.arange(first, first + len(indices))):
            raise RuntimeError(f"batch from index {first} is not contiguous: Ray Data did not preserve order")
        if "doc" in batch:
            docs = [Doc(self.nlp.vocab).from_bytes(data) for data in batch["doc"]]
            records = [(doc, doc.user_data.get(META_KEY, {})) for doc in docs]
        else:
            records = [(text, json.loads(meta)) for text, meta in zip(batch["text"], batch["meta"])]
        pairs = list(self.nlp.pipe(records, as_tuples=True, batch_size=len(records),
                                   component_cfg=self.component_cfg))
        docs = [doc for doc, _ in pairs]
        payload = serialize_batch(docs, [meta for _, meta in pairs], self.output_format, self.attrs)
        return {
            "index": numpy.array([first], dtype="int64"),
            "n_docs": numpy.array([len(docs)], dtype="int64"),
            "n_tokens": numpy.array([sum(len(doc) for doc in docs)], dtype="int64"),
            "payload": numpy.array([payload], dtype=object),
        }


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{RAY_INSTALL_HINT} ({error})") from error
    return ray


def _ray_input_blocks(ray, input_path: Path, block_docs: int, start_docs: int = 0, start_offset: int = 0,
                      start_line: int = 0) -> Tuple[List[Any], Dict[int, Tuple[int, int, int]], int]:
    """The input from doc `start_docs` on (JSONL: from byte `start_offset`) as
    object-store refs of Arrow tables of `block_docs` rows (read in the
    driver, one block at a time); per block, by the index of its first row,
    (rows, input offset after it, input line after it); the index after the
    last doc."""
    import pyarrow

    refs: List[Any] = []
    blocks: Dict[int, Tuple[int, int, int]] = {}
    columns: Dict[str, list] = {}
    index = start_docs
    position = (start_offset, start_line)

    def flush() -> None:
        if columns and columns["index"]:
            blocks[columns["index"][0]] = (len(columns["index"]), *position)
            refs.append(ray.put(pyarrow.table(columns)))
        columns.clear()

    _, records = input_records(input_path, Vocab(), start_docs, start_offset, start_line)
    for item, (meta, offset, line) in records:
        if isinstance(item, Doc):
            row: Dict[str, Any] = {"doc": item.to_bytes()}
        else:
            row = {"text": item, "meta": json.dumps(meta, ensure_ascii=False)}
        if not columns:
            columns.update({"index": [], **{key: [] for key in row}})
        columns["index"].append(index)
        for key, value in row.items():
            columns[key].append(value)
        index += 1
        position = (offset, line)
        if len(columns["index"]) >= block_docs:
            flush()
    flush()
    return refs, blocks, index


def _pipeline_files(pipeline: Path) -> Dict[str, bytes]:
    return {str(path.relative_to(pipeline)): path.read_bytes() for path in sorted(pipeline.rglob("*"))
            if path.is_file()}


def annotate_ray(
    pipeline: PathLike,
    input_path: PathLike,
    output_path: PathLike,
    *,
    batch_size: int = 128,
    workers: int = 2,
    threads: int = 1,
    exit_overrides: Optional[Dict[str, Any]] = None,
    precision: Optional[str] = None,
    address: Optional[str] = None,
    ship_pipeline: Optional[bool] = None,
    resume: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: bool = True,
) -> AnnotateResult:
    """Annotate on Ray with a pool of `workers` actors (arguments as in annotate()).

    An actor that dies (its process killed, its node lost) is started again
    (at most ACTOR_MAX_RESTARTS times) and its batch retried (at most
    TASK_MAX_RETRIES times); when Ray gives up, or returns fewer docs than
    were read, the run stops with AnnotateInterrupted and keeps a JSONL
    output's partial up to its last checkpoint (resume.py), never a short
    output under OUTPUT.
    """
    start = time.perf_counter()
    check_positive(batch_size=batch_size, workers=workers, threads=threads)
    overrides = validate_overrides(exit_overrides)
    input_path, output_path, pipeline = Path(input_path), Path(output_path), Path(pipeline)
    check_paths(pipeline, input_path, output_path)
    check_resumable(output_path, resume)
    if not tagger_names_in_config(pipeline):
        raise ValueError(f"{pipeline}: the pipeline has no {FACTORY} component")
    ray = _import_ray()
    with stop_on_sigterm() as stop, open_output(output_path, input_path, (), pipeline, overrides, resume,
                                                                  precision) as writer:
        started = not ray.is_initialized()
        if started:
            # the driver's tokenizers have run; Ray forks its processes from here
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=workers * threads, include_dashboard=False)
        try:
            if ship_pipeline is None:
                ship_pipeline = address is not None
            source = ray.put(_pipeline_files(pipeline)) if ship_pipeline else str(pipeline.resolve())
            # one block per batch: Ray Data hands whole blocks to its actors, so
            # smaller blocks spread the work over the pool
            refs, blocks, total = _ray_input_blocks(ray, input_path, batch_size, writer.start_docs,
                                                    writer.input_offset, writer.input_line)
            with progress_bar(total, progress, f"ray x{workers}", initial=writer.start_docs) as bar:
                if refs:
                    rows = _annotated_rows(ray, refs, source, overrides, file_format(output_path), batch_size,
                                           workers, threads, precision)
                    last_checkpoint = time.monotonic()
                    while True:
                        try:
                            row = next(rows, None)
                        except Exception as error:  # Ray gave up: actor restarts or task retries exhausted
                            writer.checkpoint()
                            raise interrupted(f"a failure of the Ray job ({type(error).__name__}: "
                                              f"{str(error)[:500]})", writer) from error
                        if row is None:
                            break
                        first, n_docs = int(row["index"]), int(row["n_docs"])
                        if first != writer.n_docs:
                            raise RuntimeError(f"Ray returned the batch from doc {first} when doc {writer.n_docs}"
                                               " was next: output order would differ from the input")
                        rows_sent, offset, line = blocks[first]
                        if n_docs != rows_sent:
                            raise RuntimeError(f"Ray returned {n_docs} docs for the batch from doc {first}, "
                                               f"which had {rows_sent}")
                        writer.add_serialized(row["payload"], n_docs, int(row["n_tokens"]), offset, line)
                        bar.update(n_docs)
                        if stop:
                            writer.checkpoint()
                            raise interrupted(stop.name, writer)
                        if time.monotonic() - last_checkpoint >= checkpoint_seconds:
                            writer.checkpoint()
                            last_checkpoint = time.monotonic()
            if writer.n_docs != total:  # never a silently short output
                writer.checkpoint()
                raise interrupted(f"a short result from Ray ({writer.n_docs} of {total} docs)", writer)
        finally:
            if started:
                ray.shutdown()
    return AnnotateResult("ray", writer.n_docs, writer.n_tokens, time.perf_counter() - start, output_path,
                          resumed_docs=writer.start_docs)


def _annotated_rows(ray, refs: List[Any], source: Any, overrides: Dict[str, Any], output_format: str,
                    batch_size: int, workers: int, threads: int,
                    precision: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """The RayAnnotator output rows of the input blocks, in input order."""
    dataset = ray.data.from_arrow_refs(refs)
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    with warnings.catch_warnings():
        # Ray 2.60 deprecates these actor options as map_batches keywords
        # (removal announced for 2.64) and names no replacement yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        annotated = dataset.map_batches(
            RayAnnotator,
            fn_constructor_kwargs={"pipeline": source, "exit_overrides": overrides, "output_format": output_format,
                                   "threads": threads, "precision": precision},
            batch_size=batch_size, batch_format="numpy", num_cpus=threads,
            compute=ray.data.ActorPoolStrategy(size=workers),
            max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=TASK_MAX_RETRIES,
        )
    return iter(annotated.iter_rows())
