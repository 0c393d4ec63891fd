"""`sweep`: exit mode x threshold x window (x schedule, entity rule, depth
cap) on a dev set, for one or more trained pipelines."""
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional

from ..model.precision import CONFIG_PRECISIONS
from ._util import (
    Opt, app, existing_file, fail, floats, ints, load_pipeline, named_paths, set_threads, use_gpu, words,
)

#: --entity-margins meaning "the task's default" (see default_entity_margins)
TASK_DEFAULT = "auto"


@app.command("sweep")
def sweep_cli(
    pipeline: List[str] = Opt(..., "--pipeline", "-p", metavar="NAME=PATH",
                              help="a trained pipeline to sweep, under a name of your choice (repeatable: "
                                   "-p stage1=training/joint/model-best -p stage2=...)"),
    dev: Path = Opt(..., "--dev", "-d", help=".spacy file with gold annotation"),
    output: Path = Opt(Path("metrics/sweep"), "--output", "-o",
                       help="writes OUTPUT.json, OUTPUT.md and (with matplotlib) OUTPUT.png"),
    exit_modes: str = Opt("sentence,token", "--exit-modes", help="exit modes to sweep (comma-separated)"),
    thresholds: str = Opt("0.05,0.1,0.2,0.3,0.4", "--thresholds", help="uncertainty thresholds (comma-separated)"),
    windows: str = Opt("0,1,2", "--windows", help="token mode: windows (comma-separated)"),
    later_factors: str = Opt("1", "--later-factors",
                             help="threshold schedules: f = x f for layers 2 and up, a/b = x a at layer 2 and "
                                  "x b from layer 3 on (1: one threshold; e.g. 1,4,4/16)"),
    entity_margins: str = Opt(TASK_DEFAULT, "--entity-margins",
                              help="token mode: 'off' plain TOKEE, m the entity rule (entity_exit) with margin m; "
                                   "e.g. off,1 compares both (NER pipelines only). 'auto' (or ''): the task's "
                                   "default, off,1 for pipelines whose task has entities (NER), off for the others "
                                   "(pipelines swept together share one task)"),
    entity_scales: Optional[str] = Opt(None, "--entity-scales", show_default="1",
                                       help="entity_threshold_scale values of the entity rule, e.g. 1,0.5 "
                                            "(needs a numeric --entity-margins)"),
    max_layers: str = Opt("all", "--max-layers",
                          help="depth caps (max_layer): 'all' is no cap; e.g. 8,all compares layer 8 with full "
                               "depth (each cap also alone, with exit mode off)"),
    reference: Optional[List[str]] = Opt(None, "--reference", "-r", metavar="NAME=PATH", show_default="none",
                                         help="another pipeline timed (and scored, where the task's scorer "
                                              "applies) alongside, e.g. a spaCy CNN pipeline (repeatable)"),
    reference_repetitions: Optional[int] = Opt(None, "--reference-repetitions", show_default="all",
                                               help="time the references in the first N repetitions only "
                                                    "(needs --reference)"),
    repetitions: int = Opt(3, "--repetitions", min=1, help="timed passes over the dev set (medians are reported)"),
    batch_size: int = Opt(1024, "--batch-size", min=1, help="docs per nlp.pipe batch"),
    limit: int = Opt(0, "--limit", min=0, help="use only the first N dev docs (0: all)"),
    slice_docs: int = Opt(0, "--slice-docs", min=0,
                          help="interleave the settings on slices of N docs (0: one batch)"),
    threads: int = Opt(0, "--threads", min=0, help="torch threads (0: torch's default)"),
    gpu_id: int = Opt(-1, "--gpu-id", "-g", help="GPU to run on (-1: CPU)"),
    precision: Optional[str] = Opt(None, "--precision", show_default="saved",
                                   help="load the pipelines' encoders in auto, float32, bfloat16 or int8 (time "
                                        "the precision you will deploy)"),
    bootstrap: int = Opt(1000, "--bootstrap", min=0,
                         help="resamples of the dev docs for each setting's loss interval against exit mode off "
                              "(paired bootstrap; 0: no intervals)"),
    seed: int = Opt(0, "--seed", help="seed of the bootstrap's resamples"),
    no_progress: bool = Opt(False, "--no-progress", help="no progress bar"),
) -> None:
    """Score and time exit settings on a dev set.

    Exit mode x threshold x window (x threshold schedule, entity rule, depth cap)
    for every --pipeline; writes JSON, a markdown table and (with matplotlib) a PNG
    plot. Each setting's loss against exit mode off gets an interval from a
    paired bootstrap over the dev docs (--bootstrap, --seed), which `choose
    --max-loss` uses. NER pipelines sweep the entity rule beside plain TOKEE
    unless --entity-margins says otherwise. The whole grid is checked against
    every pipeline before any timing.
    """
    from ..tuning.grid import build_grid, parse_later_factors, parse_max_layers
    from ..tuning.sweep import markdown_table, per_type_table, run_sweep, write_results
    from ..visualize.sweep_plot import PLOT_INSTALL

    paths = named_paths(pipeline, "--pipeline")
    references = named_paths(reference or [], "--reference")
    if reference_repetitions is not None and not references:
        fail("--reference-repetitions does nothing without --reference")
    if reference_repetitions is not None and reference_repetitions < 1:
        fail(f"--reference-repetitions must be >= 1; got {reference_repetitions}")
    clashes = sorted(set(paths) & set(references))
    if clashes:
        fail(f"--reference {clashes[0]!r} has the name of a --pipeline; give it another")
    _check_docbin(dev, "--dev")
    task_default = entity_margins.strip() in (TASK_DEFAULT, "")
    if not task_default:
        _entity_variants(entity_margins, entity_scales)  # a mistake in the flags fails before any loading
    modes = words(exit_modes, "--exit-modes")
    threshold_values = floats(thresholds, "--thresholds")
    window_values = ints(windows, "--windows")
    factors = _parsed(parse_later_factors, later_factors, "--later-factors")
    caps = _parsed(parse_max_layers, max_layers, "--max-layers")

    if precision is not None and precision not in CONFIG_PRECISIONS:
        fail(f"--precision must be one of {', '.join(CONFIG_PRECISIONS)}; got {precision!r}")

    set_threads(threads)
    use_gpu(gpu_id)
    pipelines = {
        name: load_pipeline(path, f"--pipeline {name}", precision=precision)
        for name, path in paths.items()
    }
    depths = {nlp.get_pipe("earlyexit_tagger").n_layers for nlp in pipelines.values()}
    if task_default:
        entity_margins = default_entity_margins(pipelines.values())
    entity_variants = _entity_variants(entity_margins, entity_scales)
    try:
        grid = build_grid(
            modes, threshold_values, window_values, later_factors=factors,
            n_layers=min(depths) if len(depths) == 1 else None, entity_variants=entity_variants, max_layers=caps,
        )
    except ValueError as error:
        fail(f"{_flag_of(str(error))}: {error}")
    loaded_references = {
        name: load_pipeline(path, f"--reference {name}", component=None) for name, path in references.items()
    }
    result = run_sweep(  # checks the whole grid against every pipeline before timing anything
        pipelines, dev, grid, repetitions=repetitions, batch_size=batch_size, limit=limit, slice_docs=slice_docs,
        progress=not no_progress, references=loaded_references, reference_repetitions=reference_repetitions,
        bootstrap=bootstrap, seed=seed,
    )
    result["models"] = {name: str(path) for name, path in paths.items()}
    result["precisions"] = {name: nlp.get_pipe("earlyexit_tagger").precision for name, nlp in pipelines.items()}
    written = write_results(result, output)
    print(f"\n{result['n_docs']} docs, {result['n_words']} words, {result['repetitions']} repetitions, "
          f"torch threads {result['torch_threads']}, precision "
          + ", ".join(f"{name} {value}" for name, value in result["precisions"].items())
          + (f", loss intervals from {bootstrap} paired resamples of the dev docs (seed {seed})"
             if result.get("bootstrap") else "") + "\n")
    print(markdown_table(result))
    types = per_type_table(result)
    if types:
        print("\nEntity F per type (Δ vs off):\n\n" + types)
    print(f"\nwritten: {', '.join(str(p) for p in written.values())}")
    if "png" not in written:
        print(f"plot not drawn: matplotlib is not installed ({PLOT_INSTALL})")


def default_entity_margins(pipelines: Iterable[Any]) -> str:
    """The task default of --entity-margins: "off,1" (plain TOKEE and the
    entity rule, margin 1) when every pipeline's task has entities, else
    "off" (a sweep refuses pipelines of different tasks anyway)."""
    tasks = [nlp.get_pipe("earlyexit_tagger").task for nlp in pipelines]
    return "off,1" if tasks and all(task.has_entities for task in tasks) else "off"


def _check_docbin(path: Path, flag: str) -> None:
    """Fail naming the flag unless `path` is a .spacy file (a DocBin) with docs."""
    from spacy.tokens import DocBin

    existing_file(path, flag)
    try:
        n_docs = len(DocBin().from_disk(path))
    except Exception as error:  # noqa: BLE001 - msgpack, zlib and spaCy raise many types here
        fail(f"{flag} {path}: not a .spacy file (spaCy DocBin): {error}")
    if not n_docs:
        fail(f"{flag} {path}: holds no docs")


def _flag_of(grid_error: str) -> str:
    """The flag a build_grid error is about."""
    for word, flag in (("max_layer", "--max-layers"), ("later-layer", "--later-factors"), ("exit mode", "--exit-modes")):
        if word in grid_error:
            return flag
    return "the sweep grid"


def _parsed(parse: Callable[[str], List[Any]], text: str, flag: str) -> List[Any]:
    """parse(text), failing with the flag's name on a ValueError."""
    try:
        values = parse(text)
    except ValueError as error:
        fail(f"{flag}: {error}")
    if not values:
        fail(f"{flag}: give at least one value")
    return values


def _entity_variants(margins: str, scales: Optional[str]) -> List[Any]:
    """The entity variants of --entity-margins and --entity-scales; scales
    without a numeric margin do nothing and are refused."""
    from ..tuning.grid import parse_entity_variants

    variants = _parsed(lambda text: parse_entity_variants(text, scales or "1"), margins, "--entity-margins")
    if scales is not None:
        floats(scales, "--entity-scales")
        if all(variant is None for variant in variants):
            fail("--entity-scales does nothing without a numeric --entity-margins (e.g. --entity-margins off,1)")
    return variants
