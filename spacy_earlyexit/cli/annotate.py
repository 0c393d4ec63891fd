"""Commands that annotate: corpora (locally or on Ray), the demo's sentences,
the exit view (HTML)."""
import argparse
import sys


def cmd_demo_annotate(args: argparse.Namespace) -> None:
    from ..workflow.demo import demo_annotate

    demo_annotate(args.pipeline, args.text, args.html)


def cmd_annotate(args: argparse.Namespace) -> None:
    from ..corpus import memory
    from ..corpus.annotate import annotate
    from ..corpus.resume import AnnotateInterrupted

    if args.allocator != "system" and args.argv is not None:
        # jemalloc keeps RSS flat on long streams where glibc's heap fragments (memory.py)
        memory.preload_jemalloc(["-m", "spacy_earlyexit", *args.argv])
    if args.allocator == "jemalloc" and memory.allocator() != "jemalloc":
        where = ("no jemalloc library was found (looked in " + ", ".join(memory.JEMALLOC_PATHS)
                 + "); install it (Debian/Ubuntu: apt-get install libjemalloc2)")
        if memory.find_jemalloc() is not None:  # called from Python: cannot start again
            where = f"this process runs on {memory.allocator()}'s malloc; preload {memory.find_jemalloc()}"
        raise SystemExit(f"error: --allocator jemalloc, but {where}, or use --allocator auto")

    overrides = _overrides(args)
    try:
        result = annotate(
            args.pipeline, args.input, args.output, engine=args.engine, batch_size=args.batch_size,
            workers=args.workers, threads=args.threads, exit_overrides=overrides, address=args.address,
            ship_pipeline=args.ship_pipeline, resume=args.resume,
            checkpoint_seconds=args.checkpoint_seconds, progress=not args.no_progress,
        )
    except ImportError as error:  # the ray engine without ray installed
        raise SystemExit(f"error: {error}") from error
    except AnnotateInterrupted as error:  # SIGTERM: 128 + 15, as if killed; the partial is kept
        print(f"{args.input}: {error}", file=sys.stderr)
        raise SystemExit(143) from error
    setting = ", ".join(f"{name}={value}" for name, value in overrides.items()) or "the pipeline's saved setting"
    engine = f"ray, {args.workers} workers" if args.engine == "ray" else "local"
    resumed = f", {result.resumed_docs} of them from the previous run" if result.resumed_docs else ""
    print(f"{args.input}: {result.n_docs} docs{resumed}, {result.n_tokens} tokens -> {result.output} "
          f"({engine}, exit: {setting}; malloc: {memory.allocator()}; {result.seconds:.1f} s, "
          f"{(result.n_docs - result.resumed_docs) / max(result.seconds, 1e-9):.1f} docs/s)")


def _overrides(args: argparse.Namespace) -> dict:
    """The exit settings given on the command line (for this run only);
    --max-layer all gives max_layer None (lifts a saved depth cap)."""
    overrides = {name: value for name, value in
                 (("exit_mode", args.exit_mode), ("threshold", args.threshold), ("window", args.window))
                 if value is not None}
    if args.max_layer is not None:
        overrides["max_layer"] = None if args.max_layer == "all" else args.max_layer
    return overrides


def _max_layer(text: str):
    """--max-layer: an integer >= 1, or "all" (no cap)."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"max layer must be an integer >= 1 or 'all'; got {text!r}")
    return value


def _add_exit_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exit-mode", choices=["off", "sentence", "token"], default=None,
                        help="override the saved exit setting for this run")
    parser.add_argument("--threshold", type=float, default=None, help="override the saved threshold")
    parser.add_argument("--window", type=int, default=None, help="override the saved window")
    parser.add_argument("--max-layer", type=_max_layer, default=None,
                        help="override the saved depth cap: at most N layers run ('all': every layer)")


def cmd_render(args: argparse.Namespace) -> None:
    from ..visualize.render_file import render_file

    output = render_file(args.pipeline, args.input, args.output, exit_overrides=_overrides(args) or None,
                         limit=args.limit or None)
    print(f"exit view of {args.input} -> {output}")


def cmd_jemalloc_path(args: argparse.Namespace) -> None:
    from ..corpus import memory

    library = memory.find_jemalloc()
    if library is None:
        raise SystemExit("error: jemalloc is not installed (Debian/Ubuntu: apt-get install libjemalloc2)")
    print(library)


def add_commands(commands: "argparse._SubParsersAction") -> None:
    demo = commands.add_parser("demo-annotate", help="annotate sentences, print entities and exit layers")
    demo.add_argument("pipeline")
    demo.add_argument("--text", action="append", default=None, help="a sentence (repeatable)")
    demo.add_argument("--html", default=None, help="also write the exit view of the sentences here")
    demo.set_defaults(func=cmd_demo_annotate)

    corpus = commands.add_parser("annotate", help="annotate a JSONL or .spacy corpus (locally or on Ray)")
    corpus.add_argument("pipeline", help="saved pipeline folder")
    corpus.add_argument("input", help='.jsonl (one {"text": ...} object per line) or .spacy')
    corpus.add_argument("output", help=".jsonl or .spacy")
    corpus.add_argument("--engine", choices=["local", "ray"], default="local")
    corpus.add_argument("--batch-size", type=int, default=1024, help="docs per batch")
    corpus.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the pipeline once")
    corpus.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: torch's setting locally, 1 per Ray actor)")
    _add_exit_overrides(corpus)
    corpus.add_argument("--address", default=None,
                        help="existing Ray cluster (auto, ray://host:10001); default: a local one")
    corpus.add_argument("--ship-pipeline", action=argparse.BooleanOptionalAction, default=None,
                        help="send the pipeline files to the Ray actors through the object store "
                             "(default: only with --address)")
    corpus.add_argument("--resume", action="store_true",
                        help="continue the partial output (OUTPUT.partial) an interrupted run left, after "
                             "checking the input, pipeline and exit settings are the same (JSONL output only); "
                             "without it a partial is replaced")
    corpus.add_argument("--checkpoint-seconds", type=float, default=5.0,
                        help="least time between two checkpoints of a JSONL output's progress, taken at the "
                             "end of a batch (0: after every batch)")
    corpus.add_argument("--no-progress", action="store_true")
    corpus.add_argument("--allocator", choices=["auto", "jemalloc", "system"], default="auto",
                        help="auto: run on jemalloc when it is installed (flat memory on long runs; "
                             "the process starts again with it preloaded); jemalloc: require it; "
                             "system: the platform's malloc")
    corpus.set_defaults(func=cmd_annotate)

    render = commands.add_parser("render", help="an HTML page showing where each token exited")
    render.add_argument("pipeline", help="saved pipeline folder")
    render.add_argument("input", help=".jsonl, .spacy, or plain text (one doc per line)")
    render.add_argument("output", help=".html")
    render.add_argument("--limit", type=int, default=0, help="the first N docs only (0: all)")
    _add_exit_overrides(render)
    render.set_defaults(func=cmd_render)

    path = commands.add_parser("jemalloc-path", help="print the installed jemalloc library, for LD_PRELOAD")
    path.set_defaults(func=cmd_jemalloc_path)
