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
                                         "(0.01 = 1 point); how the loss is judged: --rule"),
    rule: Optional[str] = Opt(None, "--rule", show_default="confident",
                              help="with --max-loss: 'confident' (the loss's upper bound at --confidence, from the "
                                   "sweep's bootstrap over dev docs, within the budget) or 'point' (the dev loss "
                                   "itself within the budget; works with sweeps without intervals)"),
    confidence: float = Opt(0.9, "--confidence",
                            help="--rule confident: the one-sided confidence of the loss's upper bound (one the "
                                 "sweep recorded: 0.8, 0.9, 0.95, 0.975, 0.99)"),
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
    (fastest within this loss: by default the fastest whose loss's 90% upper
    bound, from the sweep's paired bootstrap, is within it; --rule point for
    the dev loss itself); the setting is saved with configure_exit in a new
    folder (--output), or in the pipeline itself with --in-place. With the
    confident rule, a budget that no setting meets is refused, naming the
    closest.
    """
    from ..tuning.grid import is_baseline
    from ..tuning.operating_point import (
        ANY_MODEL, LOSS_RULES, NoIntervalsError, baseline_score, pick_confident, pick_for_speedup, pick_within_loss,
        save_operating_point,
    )

    if (target_speedup is None) == (max_loss is None):
        fail("give exactly one rule: --target-speedup X or --max-loss X")
    if rule is not None and max_loss is None:
        fail("--rule judges a --max-loss budget; --target-speedup picks the best score and takes no --rule")
    rule_name = (rule or LOSS_RULES[0]) if max_loss is not None else "target-speedup"
    if max_loss is not None and rule_name not in LOSS_RULES:
        fail(f"--rule must be {' or '.join(LOSS_RULES)}; got {rule!r}")
    if not 0.0 < confidence < 1.0:
        fail(f"--confidence must be between 0 and 1 (e.g. 0.9); got {confidence}")
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
    picked = None
    try:
        if max_loss is not None and rule_name == "confident":
            picked = pick_confident(rows, max_loss, confidence=confidence, speedup_key=speedup_key, model=from_)
            row = picked.chosen.row if picked.chosen is not None else None
            rule_text = (f"confident: the fastest setting whose {confidence:.0%} upper bound of the loss against "
                         f"exit mode off{_bootstrap_of(result)} is within {max_loss:g}")
        elif max_loss is not None:
            row = pick_within_loss(rows, max_loss, speedup_key=speedup_key, model=from_)
            rule_text = f"point: fastest within {max_loss} of the 'off' score"
        else:
            assert target_speedup is not None
            row = pick_for_speedup(rows, target_speedup, speedup_key=speedup_key, model=from_)
            rule_text = f"best {result['score_key']} with {speedup_key} >= {target_speedup}"
    except (KeyError, TypeError) as error:
        fail(f"sweep file {sweep}: a row lacks {error} (not a sweep result?)")
    except NoIntervalsError as error:
        fail(f"sweep file {sweep}: {error}; sweep again for the confident rule, or choose with --rule point")
    except ValueError as error:
        fail(f"--from: {error}" if "pipeline" in str(error) else f"--confidence: {error}"
             if "confidence" in str(error) else str(error))
    if picked is not None and picked.chosen is None:
        closest = picked.closest
        hint = "" if closest is None else (
            f"; closest: {closest.row['model']} {closest.row['name']} with a {confidence:.0%} upper bound of "
            f"{closest.bound:.4f}")
        fail(f"no setting is within a loss of {max_loss:g} with {confidence:.0%} confidence{hint}. "
             "Raise --max-loss, lower --confidence, or use --rule point.")
    if row is None:
        candidates = [r for r in rows if r.get("setting") is not None
                      and (from_ in (None, ANY_MODEL) or r["model"] == from_)]
        fastest = max((r.get(speedup_key) or 0.0) for r in candidates) if candidates else 0.0
        fail(f"no setting of the sweep qualifies ({rule_text}); the fastest reaches {fastest:.2f}x. "
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
    print(f"rule: {rule_text}")
    print(f"chosen: {row['model']} {row['name']} ({result['score_key']} {row['score']:.4f} vs its off {base:.4f}, "
          f"FLOPs speed-up {row['flops_speedup']:.2f}x, wall speed-up "
          f"{row.get('wall_speedup') or float('nan'):.2f}x, mean exit layer {row['exit_layer_mean']:.2f})")
    if row.get("loss"):
        print(f"loss against off: {_interval(row['loss'])}"
              + (f", {confidence:.0%} upper bound {picked.chosen.bound:.4f}" if picked and picked.chosen else ""))
    if picked is not None:
        _print_neighbours(picked, max_loss or 0.0, confidence, speedup_key)
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
        record.write_text(json.dumps({
            "rule": rule_text, "rule_name": rule_name, "pipeline": str(pipeline), "baseline_score": base,
            "max_loss": max_loss, "target_speedup": target_speedup, "speedup_key": speedup_key,
            "confidence": confidence if rule_name == "confident" else None,
            "loss": row.get("loss"),
            "loss_upper_bound": picked.chosen.bound if picked is not None and picked.chosen is not None else None,
            "row": row,
        }, indent=2) + "\n")


def _bootstrap_of(result: Mapping[str, Any]) -> str:
    """" (paired bootstrap: 1000 resamples of 500 dev docs, seed 0)", or ""."""
    drawn = result.get("bootstrap")
    if not isinstance(drawn, dict):
        return ""
    return (f" (paired bootstrap: {drawn.get('resamples')} resamples of {result.get('n_docs', '?')} dev docs, "
            f"seed {drawn.get('seed')})")


def _interval(loss: Mapping[str, Any]) -> str:
    """"0.0035 (mean 0.0038, 5%-95% [0.0010, 0.0066])" of a row's loss record."""
    tail = (1 - float(loss.get("interval", 0.9))) / 2
    return (f"{loss['point']:.4f} (mean {loss['mean']:.4f}, {tail:.0%}-{1 - tail:.0%} "
            f"[{loss['low']:.4f}, {loss['high']:.4f}])")


def _print_neighbours(picked: Any, max_loss: float, confidence: float, speedup_key: str) -> None:
    """The confident rule's runner-up and the next faster setting it turned down."""
    runner_up, faster = picked.runner_up, picked.faster_failing
    if runner_up is not None:
        print(f"runner-up: {runner_up.row['model']} {runner_up.row['name']} ({speedup_key} "
              f"{runner_up.row[speedup_key]:.2f}x, {confidence:.0%} upper bound {runner_up.bound:.4f})")
    else:
        print("runner-up: none (no other setting qualifies)")
    if faster is not None:
        point = (faster.row.get("loss") or {}).get("point")
        print(f"faster but not sure enough: {faster.row['model']} {faster.row['name']} ({speedup_key} "
              f"{faster.row[speedup_key]:.2f}x): its {confidence:.0%} upper bound {faster.bound:.4f} is above "
              f"{max_loss:g}" + ("" if point is None else f" (dev loss {point:.4f})"))


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
