"""`choose`: pick an operating point from a sweep and save it as the exit
setting of a copy of its pipeline (or, asked for, of the pipeline itself)."""
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ._util import (
    Arg, Opt, app, existing_dir, fail, load_pipeline, read_json, refuse_existing, replaced_folder,
)

SPEEDUP_KEYS = ("flops_speedup", "wall_speedup")


@app.command("choose")
def choose_cli(
    sweep: Path = Arg(..., metavar="SWEEP_JSON", help="the sweep's JSON (written by `sweep`)"),
    from_: Optional[str] = Opt(None, "--from", "-f", metavar="NAME",
                               show_default="the sweep's only pipeline",
                               help="which of the sweep's pipelines (its --pipeline NAME, e.g. stage2); "
                                    "'any': all of them compete"),
    target_speedup: Optional[float] = Opt(None, "--target-speedup", "-t", show_default="none",
                                          help="rule: the best score with at least this speed-up"),
    max_loss: Optional[float] = Opt(None, "--max-loss", show_default="none",
                                    help="rule: the fastest setting within this score loss of exit mode off "
                                         "(0.01 = 1 point)"),
    speedup_key: str = Opt("flops_speedup", "--speedup-key",
                           help="flops_speedup (analytic) or wall_speedup (measured on the sweep's machine)"),
    output: Optional[Path] = Opt(None, "--output", "-o", show_default="none",
                                 help="the NEW pipeline folder to save the chosen setting in (required "
                                      "unless --in-place)"),
    in_place: bool = Opt(False, "--in-place", help="save the setting into the source pipeline itself"),
    force: bool = Opt(False, "--force", help="replace an existing --output folder"),
    source: Optional[Path] = Opt(None, "--source", "-s", show_default="the path the sweep recorded",
                                 help="the pipeline folder to take (the chosen row's pipeline, e.g. where it "
                                      "lies now if it moved since the sweep)"),
    record: Optional[Path] = Opt(None, "--record", show_default="not written", help="also write the rule and the chosen row as JSON here"),
) -> None:
    """Save a sweep's best setting in a copy of its pipeline.

    The rule is --target-speedup (best score at least this fast) or --max-loss
    (fastest within this loss); the setting is saved with configure_exit in a
    new folder (--output), or in the pipeline itself with --in-place.
    """
    from ..tuning.grid import is_baseline
    from ..tuning.operating_point import (
        ANY_MODEL, baseline_score, pick_for_speedup, pick_within_loss, save_operating_point,
    )

    if (target_speedup is None) == (max_loss is None):
        fail("give exactly one rule: --target-speedup X or --max-loss X")
    if speedup_key not in SPEEDUP_KEYS:
        fail(f"--speedup-key must be {' or '.join(SPEEDUP_KEYS)}; got {speedup_key!r}")
    if in_place and output is not None:
        fail("--in-place and --output exclude each other: the setting goes to one place")
    if not in_place and output is None:
        fail("choose saves the setting in a new pipeline folder: give --output PATH "
             "(or --in-place to change the source pipeline itself)")
    if force and in_place:
        fail("--force does nothing with --in-place (it replaces an existing --output)")
    if output is not None:
        refuse_existing(output, "--output", force=force)
    result = read_json(sweep, "sweep file")
    rows = result.get("rows") if isinstance(result, dict) else None
    if not isinstance(rows, list) or "score_key" not in result:
        fail(f"sweep file {sweep}: not a sweep result (no 'rows' and 'score_key'; write one with `sweep`)")
    try:
        if max_loss is not None:
            row = pick_within_loss(rows, max_loss, speedup_key=speedup_key, model=from_)
            rule = f"fastest within {max_loss} of the 'off' score"
        else:
            assert target_speedup is not None
            row = pick_for_speedup(rows, target_speedup, speedup_key=speedup_key, model=from_)
            rule = f"best {result['score_key']} with {speedup_key} >= {target_speedup}"
    except (KeyError, TypeError) as error:
        fail(f"sweep file {sweep}: a row lacks {error} (not a sweep result?)")
    except ValueError as error:
        fail(f"--from: {error}" if "pipeline" in str(error) else str(error))
    if row is None:
        candidates = [r for r in rows if r.get("setting") is not None
                      and (from_ in (None, ANY_MODEL) or r["model"] == from_)]
        fastest = max((r.get(speedup_key) or 0.0) for r in candidates) if candidates else 0.0
        fail(f"no setting of the sweep qualifies ({rule}); the fastest reaches {fastest:.2f}x. "
             "Add larger thresholds to the sweep or relax the target.")
    pipeline = _pipeline_of(result, row, source, compete=from_ == ANY_MODEL)
    target = pipeline if in_place else output
    assert target is not None
    if not in_place and target.resolve() == pipeline.resolve():
        fail(f"--output {output} is the source pipeline: use --in-place to change it")
    nlp = load_pipeline(pipeline, "--in-place pipeline" if in_place else "source pipeline")
    try:
        with replaced_folder(target) as scratch:
            save_operating_point(nlp, row, scratch)
    except ValueError as error:
        fail(f"pipeline {pipeline} cannot take the setting {row['setting']}: {error}")
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
    print(f"saved {pipeline} with exit setting {row['setting']} -> {target}")
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(
            {"rule": rule, "pipeline": str(pipeline), "baseline_score": base, "row": row}, indent=2) + "\n")


def _pipeline_of(result: Mapping[str, Any], row: Mapping[str, Any], source: Optional[Path], *,
                 compete: bool) -> Path:
    """The pipeline to save the chosen row's setting from: --source, or the
    path the sweep recorded for the row's pipeline (with --from any the
    winner is known only now, so a --source that is not it is refused)."""
    models: Dict[str, str] = result.get("models") or {}
    recorded = models.get(row["model"])
    if source is None:
        if recorded is None:
            fail(f"the sweep records no path for pipeline {row['model']!r}: pass --source PATH")
        return existing_dir(recorded, f"pipeline {row['model']!r} (recorded by the sweep)")
    if compete and recorded is not None and Path(recorded).resolve() != source.resolve():
        fail(f"--from any chose {row['model']!r} ({recorded}), not --source {source}: "
             f"leave out --source to save the setting in the chosen pipeline")
    return existing_dir(source, "--source")
