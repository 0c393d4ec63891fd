"""Commands that set the dial: the sweep over exit settings, and `choose`."""
import argparse
import json
from pathlib import Path
from typing import Optional

from .parsing import floats, ints, words


def cmd_sweep(args: argparse.Namespace) -> None:
    import spacy
    import torch

    from ..tuning.grid import parse_entity_variants, parse_max_layers
    from ..tuning.sweep import build_grid, markdown_table, parse_later_factors, per_type_table, run_sweep, write_results

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
    depths = {nlp.get_pipe("earlyexit_tagger").n_layers for nlp in pipelines.values()}
    grid = build_grid(
        words(args.modes), floats(args.thresholds), ints(args.windows),
        later_factors=parse_later_factors(args.later_factors), n_layers=min(depths) if len(depths) == 1 else None,
        entity_variants=parse_entity_variants(args.entity_margins, args.entity_scales),
        max_layers=parse_max_layers(args.max_layers),
    )
    references = {}
    for item in args.reference or []:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--reference takes NAME=PIPELINE; got {item!r}")
        references[name] = spacy.load(path)
    result = run_sweep(
        pipelines, args.dev, grid,
        repetitions=args.repetitions, batch_size=args.batch_size, limit=args.limit,
        slice_docs=args.slice_docs,
        progress=not args.no_progress,
        references=references, reference_repetitions=args.reference_repetitions or None,
    )
    result["models"] = paths
    written = write_results(result, args.output)
    print(f"\n{result['n_docs']} docs, {result['n_words']} words, {result['repetitions']} repetitions, "
          f"torch threads {result['torch_threads']}\n")
    print(markdown_table(result))
    types = per_type_table(result)
    if types:
        print("\nEntity F per type (Δ vs off):\n\n" + types)
    print(f"\nwritten: {', '.join(str(p) for p in written.values())}")


def cmd_choose(args: argparse.Namespace) -> None:
    from ..tuning.grid import is_baseline
    from ..tuning.operating_point import (
        ANY_MODEL, baseline_score, pick_for_speedup, pick_within_loss, write_operating_point,
    )

    result = json.loads(Path(args.sweep).read_text(encoding="utf8"))
    rows = result["rows"]
    if args.max_loss is not None:
        row = pick_within_loss(rows, args.max_loss, speedup_key=args.speedup_key, model=args.model)
        rule = f"fastest within {args.max_loss} of the 'off' score"
    else:
        row = pick_for_speedup(rows, args.target_speedup, speedup_key=args.speedup_key, model=args.model)
        rule = f"best {result['score_key']} with {args.speedup_key} >= {args.target_speedup}"
    if row is None:
        candidates = [r for r in rows if args.model in (None, ANY_MODEL) or r["model"] == args.model]
        fastest = max((r.get(args.speedup_key) or 0.0) for r in candidates)
        raise SystemExit(f"no setting of the sweep qualifies ({rule}); the fastest reaches "
                         f"{fastest:.2f}x. Add larger thresholds to the sweep or relax the target.")
    pipeline = _pipeline_of(result, row, args.pipeline, compete=args.model == ANY_MODEL)
    output = write_operating_point(pipeline, row, args.output)
    base = baseline_score(rows, row["model"])
    print(f"rule: {rule}")
    print(f"chosen: {row['model']} {row['name']} ({result['score_key']} {row['score']:.4f} vs its off {base:.4f}, "
          f"FLOPs speed-up {row['flops_speedup']:.2f}x, wall speed-up "
          f"{row.get('wall_speedup') or float('nan'):.2f}x, mean exit layer {row['exit_layer_mean']:.2f})")
    per_type = row.get("per_type")
    if per_type:
        off_types = next((r.get("per_type") or {} for r in rows
                          if is_baseline(r["setting"]) and r["model"] == row["model"]), {})
        print("entity F per type (vs off): " + ", ".join(
            f"{label} {value * 100:.1f} ({(value - off_types.get(label, value)) * 100:+.1f})"
            for label, value in per_type.items()
        ))
    print(f"saved {pipeline} with exit setting {row['setting']} -> {output}")
    if args.record:
        record = Path(args.record)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(
            {"rule": rule, "pipeline": str(pipeline), "baseline_score": base, "row": row}, indent=2) + "\n")


def _pipeline_of(result: dict, row: dict, pipeline: Optional[str], *, compete: bool) -> str:
    """The pipeline to save the chosen row's setting in: --pipeline, or the path the sweep
    recorded for the row's model (needed with --model any, `compete`: the winner is known only now)."""
    recorded = (result.get("models") or {}).get(row["model"])
    if pipeline is None:
        if recorded is None:
            raise SystemExit(f"the sweep records no path for pipeline {row['model']!r}: pass --pipeline")
        return str(recorded)
    if compete and recorded is not None and Path(recorded).resolve() != Path(pipeline).resolve():
        raise SystemExit(f"--model any chose {row['model']!r} ({recorded}), not --pipeline {pipeline}: "
                         f"leave out --pipeline to save the setting in the chosen pipeline")
    return pipeline


def add_commands(commands: "argparse._SubParsersAction") -> None:
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
    sweep.add_argument("--entity-margins", default="off",
                       help="token mode: 'off' plain TOKEE, m the entity rule (entity_exit) with margin m; "
                            "e.g. off,1 compares both")
    sweep.add_argument("--entity-scales", default="1",
                       help="entity_threshold_scale values of the entity rule (e.g. 1,0.5)")
    sweep.add_argument("--max-layers", default="all",
                       help="depth caps (max_layer): at most L layers run, the words still active exit at "
                            "layer L; 'all' is no cap; e.g. 8,all compares layer 8 with full depth (each cap "
                            "also alone, with exit mode off)")
    sweep.add_argument("--reference", action="append", default=None,
                       help="NAME=PIPELINE: another pipeline timed (and scored, where the task's scorer "
                            "applies) alongside, e.g. a spaCy CNN pipeline; drawn in the plot (repeatable)")
    sweep.add_argument("--reference-repetitions", type=int, default=0,
                       help="time the references in the first N repetitions only (0: all)")
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
    choose.add_argument("--pipeline", default=None,
                        help="where the chosen setting goes (default: the chosen row's pipeline as the sweep recorded it)")
    choose.add_argument("--output", default=None, help="where to save (default: in place)")
    choose.add_argument("--model", default=None,
                        help="which of the sweep's pipelines (e.g. stage2); 'any': all of them compete")
    rule = choose.add_mutually_exclusive_group(required=True)
    rule.add_argument("--target-speedup", type=float, help="best score with at least this speed-up")
    rule.add_argument("--max-loss", type=float, help="fastest within this score loss (0.01 = 1 point)")
    choose.add_argument("--speedup-key", default="flops_speedup", choices=["flops_speedup", "wall_speedup"])
    choose.add_argument("--record", default=None, help="also write the chosen row as JSON here")
    choose.set_defaults(func=cmd_choose)
