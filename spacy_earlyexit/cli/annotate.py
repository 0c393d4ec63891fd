"""Commands that annotate: `annotate` (a corpus, in this process or on Ray),
`render` (the exit view as HTML) and `jemalloc-path`."""
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from . import _util
from ..model.precision import CONFIG_PRECISIONS
from ._util import Arg, Opt, app, existing_dir, fail

EXIT_MODES = ("off", "sentence", "token")
ENGINES = ("local", "ray")
ALLOCATORS = ("auto", "jemalloc", "system")

EXIT_MODE_HELP = "override the saved exit mode for this run: off, sentence or token"
THRESHOLD_HELP = "override the saved threshold for this run"
WINDOW_HELP = "override the saved window for this run (token mode)"
MAX_LAYER_HELP = "override the saved depth cap for this run: at most N layers run ('all': every layer)"


def parse_max_layer(text: str) -> Any:
    """--max-layer: an integer >= 1, or "all" (no cap: max_layer None)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        fail(f"--max-layer must be an integer >= 1 or 'all'; got {text!r}")
    return value


def exit_overrides(
    exit_mode: Optional[str], threshold: Optional[float], window: Optional[int], max_layer: Optional[str]
) -> Dict[str, Any]:
    """The exit settings given on the command line (for this run only);
    --max-layer all gives max_layer None (lifts a saved depth cap)."""
    if exit_mode is not None and exit_mode not in EXIT_MODES:
        fail(f"--exit-mode must be one of {', '.join(EXIT_MODES)}; got {exit_mode!r}")
    overrides: Dict[str, Any] = {
        name: value for name, value in (("exit_mode", exit_mode), ("threshold", threshold), ("window", window))
        if value is not None
    }
    if max_layer is not None:
        overrides["max_layer"] = parse_max_layer(max_layer)
    return overrides


@app.command("annotate")
def annotate_cli(
    pipeline: Path = Arg(..., help="a trained pipeline (folder)"),
    input: Path = Arg(..., help='.jsonl (one {"text": ...} object per line) or .spacy'),
    output: Path = Arg(..., help=".jsonl or .spacy (written whole at the end; OUTPUT.partial meanwhile)"),
    engine: str = Opt("local", "--engine", "-e", help="local (this process) or ray"),
    batch_size: int = Opt(1024, "--batch-size", min=1, help="docs per batch"),
    workers: Optional[int] = Opt(None, "--workers", show_default="2",
                                 help="--engine ray: Ray actors, each loading the pipeline once"),
    threads: Optional[int] = Opt(None, "--threads", min=0, show_default="torch's setting; 1 per Ray actor",
                                 help="torch threads per process"),
    exit_mode: Optional[str] = Opt(None, "--exit-mode", show_default="saved", help=EXIT_MODE_HELP),
    threshold: Optional[float] = Opt(None, "--threshold", show_default="saved", help=THRESHOLD_HELP),
    window: Optional[int] = Opt(None, "--window", min=0, show_default="saved", help=WINDOW_HELP),
    max_layer: Optional[str] = Opt(None, "--max-layer", show_default="saved", help=MAX_LAYER_HELP),
    precision: Optional[str] = Opt(None, "--precision", show_default="saved",
                                   help="what the encoder runs in: auto (this CPU's fast path: bfloat16 where "
                                        "it is fast, int8 for quantized pipelines), float32, bfloat16 or int8"),
    address: Optional[str] = Opt(None, "--address", show_default="a local Ray",
                                 help="--engine ray: an existing Ray cluster (auto, ray://host:10001)"),
    ship_pipeline: Optional[bool] = Opt(None, "--ship-pipeline/--no-ship-pipeline", show_default="with --address",
                                        help="--engine ray: send the pipeline files to the actors through the "
                                             "object store"),
    resume: bool = Opt(False, "--resume",
                       help="continue the partial output (OUTPUT.partial) an interrupted run left, after checking "
                            "the input, pipeline, exit settings and precision are the same (JSONL output only); "
                            "without it a partial is replaced"),
    checkpoint_seconds: float = Opt(5.0, "--checkpoint-seconds", min=0.0,
                                    help="least time between two checkpoints of a JSONL output's progress, taken "
                                         "at the end of a batch (0: after every batch)"),
    no_progress: bool = Opt(False, "--no-progress", help="no progress bar"),
    allocator: str = Opt("system", "--allocator",
                         help="system: the platform's malloc (memory stays flat on glibc too); auto: run on "
                              "jemalloc when it is installed (the process starts again with it preloaded; "
                              "fewer words/s); jemalloc: require it"),
) -> None:
    """Annotate a JSONL or .spacy corpus (locally or on Ray)."""
    from ..corpus import memory
    from ..corpus.annotate import annotate
    from ..corpus.resume import AnnotateInterrupted

    if engine not in ENGINES:
        fail(f"--engine must be local or ray; got {engine!r}")
    if allocator not in ALLOCATORS:
        fail(f"--allocator must be one of {', '.join(ALLOCATORS)}; got {allocator!r}")
    if engine != "ray":
        for flag, value in (("--workers", workers), ("--address", address), ("--ship-pipeline", ship_pipeline)):
            if value is not None:
                fail(f"{flag} does nothing without --engine ray")
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1; got {workers}")
    if precision is not None and precision not in CONFIG_PRECISIONS:
        fail(f"--precision must be one of {', '.join(CONFIG_PRECISIONS)}; got {precision!r}")
    overrides = exit_overrides(exit_mode, threshold, window, max_layer)
    existing_dir(pipeline, "PIPELINE")
    if allocator != "system" and _util.PROCESS_ARGV is not None:
        memory.preload_jemalloc(["-m", "spacy_earlyexit", *_util.PROCESS_ARGV])
    if allocator == "jemalloc" and memory.allocator() != "jemalloc":
        where = ("no jemalloc library was found (looked in " + ", ".join(memory.JEMALLOC_PATHS)
                 + "); install it (Debian/Ubuntu: apt-get install libjemalloc2)")
        if memory.find_jemalloc() is not None:  # called from Python: cannot start again
            where = f"this process runs on {memory.allocator()}'s malloc; preload {memory.find_jemalloc()}"
        fail(f"--allocator jemalloc, but {where}, or use --allocator auto")
    try:
        result = annotate(
            pipeline, input, output, engine=engine, batch_size=batch_size, workers=workers or 2, threads=threads,
            exit_overrides=overrides, precision=precision, address=address, ship_pipeline=ship_pipeline, resume=resume,
            checkpoint_seconds=checkpoint_seconds, progress=not no_progress,
        )
    except ImportError as error:  # the ray engine without ray installed
        fail(str(error))
    except AnnotateInterrupted as error:  # SIGTERM: 128 + 15, as if killed; the partial is kept
        print(f"{input}: {error}", file=sys.stderr)
        raise SystemExit(143) from error
    setting = ", ".join(f"{name}={value}" for name, value in overrides.items()) or "the pipeline's saved setting"
    where = f"ray, {workers or 2} workers" if engine == "ray" else "local"
    resumed = f", {result.resumed_docs} of them from the previous run" if result.resumed_docs else ""
    print(f"{input}: {result.n_docs} docs{resumed}, {result.n_tokens} tokens -> {result.output} "
          f"({where}, exit: {setting}; precision: {result.precision or precision or 'saved'}; "
          f"malloc: {memory.allocator()}; {result.seconds:.1f} s, "
          f"{(result.n_docs - result.resumed_docs) / max(result.seconds, 1e-9):.1f} docs/s)")


@app.command("render")
def render_cli(
    pipeline: Path = Arg(..., help="a trained pipeline (folder)"),
    input: Path = Arg(..., help=".jsonl, .spacy, or plain text (one doc per line)"),
    output: Path = Arg(..., help="the HTML page to write"),
    limit: int = Opt(0, "--limit", min=0, help="the first N docs only (0: all)"),
    exit_mode: Optional[str] = Opt(None, "--exit-mode", show_default="saved", help=EXIT_MODE_HELP),
    threshold: Optional[float] = Opt(None, "--threshold", show_default="saved", help=THRESHOLD_HELP),
    window: Optional[int] = Opt(None, "--window", min=0, show_default="saved", help=WINDOW_HELP),
    max_layer: Optional[str] = Opt(None, "--max-layer", show_default="saved", help=MAX_LAYER_HELP),
) -> None:
    """Write the exit view of a corpus as an HTML page.

    Every token is shaded by the layer where it exited.
    """
    from ..visualize.render_file import render_file

    overrides = exit_overrides(exit_mode, threshold, window, max_layer)
    existing_dir(pipeline, "PIPELINE")
    page = render_file(pipeline, input, output, exit_overrides=overrides or None, limit=limit or None)
    print(f"exit view of {input} -> {page}")


@app.command("jemalloc-path")
def jemalloc_path_cli() -> None:
    """Print the installed jemalloc library (for LD_PRELOAD)."""
    from ..corpus import memory

    library = memory.find_jemalloc()
    if library is None:
        fail("jemalloc is not installed (Debian/Ubuntu: apt-get install libjemalloc2)")
    print(library)
