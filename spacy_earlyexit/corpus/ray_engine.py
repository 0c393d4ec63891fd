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
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy
import spacy
import torch
from spacy.tokens import Doc
from spacy.vocab import Vocab

from .formats import META_KEY, PathLike, file_format, open_writer, read_docbin, read_jsonl, serialize_batch
from .job import (
    FACTORY, AnnotateResult, check_paths, check_positive, component_cfg, config_tagger_names, label_attrs,
    progress_bar, tagger_names, validate_overrides,
)

RAY_INSTALL_HINT = "the ray engine needs Ray Data: pip install spacy-earlyexit[ray]"


class RayAnnotator:
    """The Ray Data callable class: loads the pipeline once per actor and turns
    a batch of input rows into one row of serialized annotations.

    pipeline: a folder every node can read, or an ObjectRef of the folder's
        files ({relative path: bytes}) written to a temporary folder first.
    Input rows: "index" and either "text" + "meta" (JSON) or "doc" (Doc bytes).
    Output row: "index" (of the batch's first doc), "n_docs", "n_tokens" and
    "payload" (serialize_batch's bytes).
    """

    def __init__(self, pipeline: Any, exit_overrides: Dict[str, Any], output_format: str, threads: int) -> None:
        torch.set_num_threads(threads)
        if isinstance(pipeline, str):
            self.nlp = spacy.load(pipeline)
        else:
            import ray

            with tempfile.TemporaryDirectory() as folder:
                for relative, data in ray.get(pipeline).items():
                    target = Path(folder) / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                self.nlp = spacy.load(folder)
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


def _ray_input_blocks(ray, input_path: Path, block_docs: int) -> Tuple[List[Any], int]:
    """The input as object-store refs of Arrow tables of `block_docs` rows
    (read in the driver, one block at a time); also the number of docs."""
    import pyarrow

    refs: List[Any] = []
    columns: Dict[str, list] = {}
    n_docs = 0

    def flush() -> None:
        if columns and columns["index"]:
            refs.append(ray.put(pyarrow.table(columns)))
        columns.clear()

    if file_format(input_path) == "jsonl":
        rows: Iterable[Dict[str, Any]] = (
            {"text": text, "meta": json.dumps(meta, ensure_ascii=False)} for text, meta in read_jsonl(input_path)
        )
    else:
        rows = ({"doc": doc.to_bytes()} for doc in read_docbin(input_path, Vocab())[1])
    for row in rows:
        if not columns:
            columns.update({"index": [], **{key: [] for key in row}})
        columns["index"].append(n_docs)
        for key, value in row.items():
            columns[key].append(value)
        n_docs += 1
        if len(columns["index"]) >= block_docs:
            flush()
    flush()
    return refs, n_docs


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
    address: Optional[str] = None,
    ship_pipeline: Optional[bool] = None,
    progress: bool = True,
) -> AnnotateResult:
    """Annotate on Ray with a pool of `workers` actors (arguments as in annotate())."""
    start = time.perf_counter()
    check_positive(batch_size=batch_size, workers=workers, threads=threads)
    overrides = validate_overrides(exit_overrides)
    input_path, output_path, pipeline = Path(input_path), Path(output_path), Path(pipeline)
    check_paths(pipeline, input_path, output_path)
    if not config_tagger_names(pipeline):
        raise ValueError(f"{pipeline}: the pipeline has no {FACTORY} component")
    ray = _import_ray()
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
        refs, total = _ray_input_blocks(ray, input_path, batch_size)
        n_docs = n_tokens = 0
        with open_writer(output_path, ()) as writer, progress_bar(total, progress, f"ray x{workers}") as bar:
            if refs:
                dataset = ray.data.from_arrow_refs(refs)
                dataset.context.execution_options.preserve_order = True
                dataset.context.enable_progress_bars = False
                annotated = dataset.map_batches(
                    RayAnnotator,
                    fn_constructor_kwargs={"pipeline": source, "exit_overrides": overrides,
                                           "output_format": file_format(output_path), "threads": threads},
                    batch_size=batch_size, batch_format="numpy", num_cpus=threads,
                    compute=ray.data.ActorPoolStrategy(size=workers),
                )
                for row in annotated.iter_rows():
                    if int(row["index"]) != n_docs:
                        raise RuntimeError(f"Ray returned the batch from doc {row['index']} when doc "
                                           f"{n_docs} was next: output order would differ from the input")
                    writer.add_serialized(row["payload"])
                    n_docs += int(row["n_docs"])
                    n_tokens += int(row["n_tokens"])
                    bar.update(int(row["n_docs"]))
    finally:
        if started:
            ray.shutdown()
    return AnnotateResult("ray", n_docs, n_tokens, time.perf_counter() - start, output_path)
