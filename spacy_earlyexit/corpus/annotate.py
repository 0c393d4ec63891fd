"""Annotate a corpus with a saved pipeline, in one process or on a Ray cluster.

    from spacy_earlyexit.corpus import annotate
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
are held in memory in DocBin's compact form). Output is written next to
OUTPUT and renamed when complete: JSONL to OUTPUT.partial with checkpoints
in OUTPUT.partial.json, so that a run killed (SIGKILL, SIGTERM) or failed
on Ray can continue with `resume=True` (resume.py); .spacy to a temporary
file, not resumable.

The Ray engine (`pip install spacy-earlyexit[ray]`, see ray_engine.py) reads
the input in the driver into Ray's object store, runs Ray Data `map_batches`
with a pool of `workers` actors, each loading the pipeline once and annotating
with `threads` torch threads, and writes their serialized results in input
order.

The local engine annotates each batch of `batch_size` docs inside
`nlp.memory_zone()` and writes its docs out before the zone closes, so the
strings a long run meets are freed batch by batch instead of piling up in
the StringStore (docs/production.md). Output is the same with and without.

The pipeline's saved exit settings are used unless `exit_overrides` (e.g.
{"threshold": 0.2}) are given; they go to every `earlyexit_tagger` component
through nlp.pipe's component_cfg, for this run only.
"""
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from spacy.language import Language
from spacy.util import minibatch

from ..model.precision import CONFIG_PRECISIONS, check_precision
from ..pipeline.load import load
from .formats import PathLike, input_records
from .job import (
    FACTORY, AnnotateResult, batch_memory_zone, check_paths, check_positive, component_cfg, label_attrs,
    progress_bar, tagger_names, validate_overrides,
)
from .resume import CHECKPOINT_SECONDS, check_resumable, interrupted, open_output, stop_on_sigterm

ENGINES = ("local", "ray")


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
    precision: Optional[str] = None,
    address: Optional[str] = None,
    ship_pipeline: Optional[bool] = None,
    resume: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
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
    precision: what the early-exit components run in ("auto", "float32",
        "bfloat16", "int8"; see spacy_earlyexit.model.precision); default: as saved. Only
        for a pipeline folder (a loaded Language already has its precision).
    address: Ray cluster to connect to ("auto", "ray://host:10001"); default:
        an already initialized Ray, else a local one with workers x threads CPUs.
    ship_pipeline: send the pipeline's files to the actors through the object
        store (for clusters whose nodes cannot read the folder); default: only
        when `address` is given.
    resume: continue the partial output an interrupted run left (JSONL
        output only; see resume.py); without it a partial is replaced.
    checkpoint_seconds: least time between two checkpoints of a JSONL
        output (taken at the end of a batch; 0: after every batch).
    progress: a tqdm bar of docs on stderr.
    Raises resume.AnnotateInterrupted on SIGTERM (in the main thread), after
    keeping a resumable partial of a JSONL output.
    """
    if precision is not None:
        check_precision(precision, CONFIG_PRECISIONS)
    if precision is not None and isinstance(pipeline, Language):
        raise ValueError("precision applies when the pipeline is loaded: give a saved pipeline folder, or load "
                         "it with spacy_earlyexit.load(path, precision=...)")
    if engine == "local":
        return annotate_local(pipeline, input_path, output_path, batch_size=batch_size, threads=threads,
                              exit_overrides=exit_overrides, precision=precision, resume=resume,
                              checkpoint_seconds=checkpoint_seconds, progress=progress)
    if engine == "ray":
        if isinstance(pipeline, Language):
            raise ValueError("the ray engine loads the pipeline in its workers: give a saved pipeline folder")
        from .ray_engine import annotate_ray

        return annotate_ray(pipeline, input_path, output_path, batch_size=batch_size, workers=workers,
                            threads=1 if threads is None else threads, exit_overrides=exit_overrides,
                            precision=precision, address=address, ship_pipeline=ship_pipeline, resume=resume,
                            checkpoint_seconds=checkpoint_seconds, progress=progress)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")



def annotate_local(
    pipeline: Union[PathLike, Language],
    input_path: PathLike,
    output_path: PathLike,
    *,
    batch_size: int = 1024,
    threads: Optional[int] = None,
    exit_overrides: Optional[Dict[str, Any]] = None,
    precision: Optional[str] = None,
    resume: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: bool = True,
) -> AnnotateResult:
    """Annotate in this process with nlp.pipe (arguments as in annotate())."""
    start = time.perf_counter()
    check_positive(batch_size=batch_size, threads=threads)
    overrides = validate_overrides(exit_overrides)
    input_path, output_path = Path(input_path), Path(output_path)
    check_paths(None if isinstance(pipeline, Language) else pipeline, input_path, output_path)
    check_resumable(output_path, resume)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        nlp = pipeline if isinstance(pipeline, Language) else load(pipeline, precision=precision)
        names = tagger_names(nlp)
        if not names:
            raise ValueError(f"the pipeline has no {FACTORY} component (components: {', '.join(nlp.pipe_names)})")
        with stop_on_sigterm() as stop, \
                open_output(output_path, input_path, label_attrs(nlp), pipeline, overrides, resume,
                            precision) as writer:
            total, records = input_records(input_path, nlp.vocab, writer.start_docs, writer.input_offset,
                                           writer.input_line)
            with progress_bar(total, progress, "local", initial=writer.start_docs) as bar:
                last_checkpoint = time.monotonic()
                # records are read outside the zone (a .spacy input's strings
                # stay); each batch is annotated AND written inside its zone
                for batch in minibatch(records, size=batch_size):
                    with batch_memory_zone(nlp):
                        annotated = nlp.pipe(batch, as_tuples=True, batch_size=batch_size,
                                             component_cfg=component_cfg(names, overrides))
                        for doc, (meta, input_offset, input_line) in annotated:
                            writer.add(doc, meta, input_offset, input_line)
                            bar.update(1)
                            if stop:
                                writer.checkpoint()
                                raise interrupted(stop.name, writer)
                    # a full batch is written (the last, short one is committed)
                    if len(batch) == batch_size and time.monotonic() - last_checkpoint >= checkpoint_seconds:
                        writer.checkpoint()
                        last_checkpoint = time.monotonic()
    finally:
        torch.set_num_threads(previous_threads)
    return AnnotateResult("local", writer.n_docs, writer.n_tokens, time.perf_counter() - start, output_path,
                          resumed_docs=writer.start_docs, precision=getattr(nlp.get_pipe(names[0]), "precision", None))
