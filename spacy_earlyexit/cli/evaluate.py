"""`evaluate`: a pipeline's score on a corpus with its exit setting, and the
wall-clock speed-up of that setting over full depth, with config overrides
as `spacy train` takes them (`--components.earlyexit_tagger.threshold 0.1`)."""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from ._util import COMPONENT, Arg, Opt, app, existing_file, fail, load_pipeline, set_threads, use_gpu

#: the headline score of each task
HEADLINE = {"ner": "ents_f", "pos": "pos_acc", "tag": "tag_acc", "segment": "token_f"}
FULL_DEPTH = {"exit_mode": "off", "max_layer": None}


def config_overrides(args: List[str], pipeline: Path) -> Dict[str, Any]:
    """`--section.key value` arguments -> {"section.key": value}, each key
    checked against the pipeline's config.cfg."""
    from spacy.cli._util import parse_config_overrides
    from spacy.util import load_config

    try:
        overrides = parse_config_overrides(args)
    except SystemExit:
        fail(f"cannot read the config overrides {' '.join(args)!r}: give them as --section.key value")
    config = load_config(pipeline / "config.cfg", interpolate=False)
    for key in overrides:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                fail(f"--{key}: the pipeline's config.cfg has no such setting")
            node = node[part]
    return overrides


@app.command(
    "evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def evaluate_cli(
    ctx: typer.Context,
    pipeline: Path = Arg(..., help="a trained pipeline (folder)"),
    data: Path = Arg(..., help="a .spacy corpus with gold annotation"),
    output: Optional[Path] = Opt(None, "--output", "-o", show_default="not written", help="also write the scores and timings as JSON here"),
    repetitions: int = Opt(3, "--repetitions", min=0, help="interleaved timing repetitions (0: no timing)"),
    batch_size: int = Opt(256, "--batch-size", min=1, help="docs per nlp.pipe batch"),
    limit: int = Opt(0, "--limit", min=0, help="first N docs of DATA only (0: all)"),
    threads: int = Opt(0, "--threads", min=0, help="torch threads (0: torch's default)"),
    gpu_id: int = Opt(-1, "--gpu-id", "-g", help="GPU to run on (-1: CPU)"),
) -> None:
    """Score a pipeline and time its exit setting against full depth.

    Config overrides follow as in `spacy train`, e.g.
    `--components.earlyexit_tagger.exit_mode token --components.earlyexit_tagger.threshold 0.1`.
    """
    from spacy.training import Corpus

    from ..tuning.timing import Contestant, fresh_docs, paired_speedup, time_interleaved, time_pipe, words_per_second

    existing_file(data, "DATA")
    if data.suffix != ".spacy":
        fail(f"DATA {data}: expected a .spacy corpus (spaCy's DocBin), got {data.suffix or 'no extension'}")
    overrides = config_overrides(list(ctx.args), pipeline) if (pipeline / "config.cfg").exists() else {}
    set_threads(threads)
    use_gpu(gpu_id)
    nlp = load_pipeline(pipeline, "PIPELINE", config=overrides)
    tagger = nlp.get_pipe(COMPONENT)
    try:
        examples = list(Corpus(data, limit=limit)(nlp))
    except (OSError, ValueError) as error:
        fail(f"DATA {data}: cannot read it as a .spacy corpus ({error})")
    if not examples:
        fail(f"DATA {data}: no documents")
    scores = nlp.evaluate(examples, batch_size=batch_size)
    headline = HEADLINE.get(tagger.task.name, "")
    result: Dict[str, Any] = {
        "pipeline": str(pipeline),
        "data": str(data),
        "exit_setting": tagger.exit_settings.to_dict(),
        "overrides": overrides,
        "scores": {key: value for key, value in scores.items() if not isinstance(value, dict)},
    }
    print(f"{pipeline}: {tagger.exit_settings.describe()}")
    print(f"  {headline or 'score'} {100 * float(scores.get(headline) or 0.0):.2f}  "
          f"mean exit layer {scores.get('exit_layer_mean', float('nan')):.2f} of {tagger.n_layers}  "
          f"FLOPs speed-up {scores.get('flops_speedup', float('nan')):.2f}x")
    if repetitions:
        gold = [eg.reference for eg in examples]
        n_words = sum(len(doc) for doc in fresh_docs(nlp, gold))

        def contestant(name: str, setting: Optional[Dict[str, Any]]) -> Contestant:
            return Contestant(name, lambda part: time_pipe(nlp, fresh_docs(nlp, gold[part]), batch_size, setting)[0])

        time_pipe(nlp, fresh_docs(nlp, gold[:64]), batch_size, FULL_DEPTH)  # warm-up
        seconds = time_interleaved(
            [contestant("full_depth", FULL_DEPTH), contestant("setting", None)],
            len(gold), repetitions=repetitions, slice_docs=max(1, len(gold) // 4),
        )
        speedup = paired_speedup(seconds["full_depth"], seconds["setting"])
        words = words_per_second(n_words, seconds["setting"])
        result["timing"] = {"seconds": seconds, "wall_speedup": speedup, "words_per_second": words, "words": n_words}
        print(f"  wall-clock speed-up {speedup:.2f}x over full depth ({words:,.0f} words/s; median of "
              f"{repetitions} interleaved repetitions, {n_words:,} words)")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
        print(f"wrote {output}")
