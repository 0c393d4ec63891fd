"""Packed against masked path on one encoder family, in one process, interleaved.

A random encoder of the family (default DistilBERT, 6 layers, hidden 256,
d_ff 1024, 4 heads) reads EWT dev sentences tokenized with the MiniLM
backbone's WordPiece vocabulary, in the batches predict_docs makes (64
spans, waves of WAVE_SLOTS). Two exit patterns: full depth, and exits drawn
per word from a fixed distribution with mean layer about 2 of 6 (what the
MiniLM POS sweep's operating points reach; forced exits, as the weights are
random). Every repetition times each contestant once, the order reversed
every other repetition; speed-ups are medians of paired ratios.

    python benchmarks/encoder_families/family_paths.py --family distilbert --docs 1000 --reps 7 \
        --out benchmarks/encoder_families/family_paths_distilbert
"""
import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy
import torch

from spacy_earlyexit.layers.early_exit_transformer import PIECES_PER_SPAN, WAVE_SLOTS
from spacy_earlyexit.layers.wordpieces import tokenize_docs
from spacy_earlyexit.model import EarlyExitEncoder, ExitSettings, spans_cost
from spacy_earlyexit.model.batching import consecutive_groups, length_batches
from spacy_earlyexit.tuning.timing import paired_speedup

EXIT_SHARES = [0.55, 0.2, 0.1, 0.06, 0.04, 0.05]  # layers 1..6, mean 1.99


def build_transformer(family: str, vocab_size: int, layers: int, hidden: int, heads: int):
    torch.manual_seed(0)
    if family == "distilbert":
        from transformers import DistilBertConfig, DistilBertModel

        return DistilBertModel(DistilBertConfig(
            vocab_size=vocab_size, dim=hidden, hidden_dim=4 * hidden, n_layers=layers, n_heads=heads,
        )).eval()
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads,
    ), add_pooling_layer=False).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="distilbert", choices=["distilbert", "bert"])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--corpus", default="/work/runs/corpus/dev.spacy")
    parser.add_argument("--tokenizer", default="/work/runs/minilm")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import spacy
    from spacy.tokens import DocBin
    from transformers import AutoTokenizer

    nlp = spacy.blank("en")
    docs = list(DocBin().from_disk(args.corpus).get_docs(nlp.vocab))[: args.docs]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, use_fast=True)
    pieces = tokenize_docs(docs, lambda ds: [[d[:]] for d in ds], tokenizer, 512)
    transformer = build_transformer(args.family, len(tokenizer), args.layers, args.hidden, args.heads)
    packed = EarlyExitEncoder(transformer, 17, offramp_dropout=0.0).eval()
    masked = EarlyExitEncoder(transformer, 17, offramp_dropout=0.0, packed=False).eval()
    masked.offramps = packed.offramps
    assert packed.packed and not masked.packed

    chunks = length_batches(pieces.span_lengths, args.batch_size, args.batch_size * PIECES_PER_SPAN)
    lengths = pieces.span_lengths
    slots = [len(c) * int(lengths[c].max()) for c in chunks]
    waves = [[chunks[i] for i in group] for group in consecutive_groups(slots, WAVE_SLOTS)]
    batches = [[pieces.encoder_batch(chunk, tokenizer.pad_token_id) for chunk in wave] for wave in waves]
    rng = numpy.random.default_rng(0)
    shares = numpy.asarray(EXIT_SHARES[: args.layers]) / sum(EXIT_SHARES[: args.layers])
    forced = [
        [torch.from_numpy(rng.choice(numpy.arange(1, args.layers + 1), size=b.n_words, p=shares)) for b in wave]
        for wave in batches
    ]
    word_exit = numpy.concatenate([f.numpy() for wave in forced for f in wave])
    n_words = int(sum(b.n_words for wave in batches for b in wave))

    def run(encoder: EarlyExitEncoder, exits: bool) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for index, wave in enumerate(batches):
                encoder.forward_batches(wave, ExitSettings(), forced[index] if exits else None)
        return time.perf_counter() - start

    contestants = {
        "packed_full": (packed, False), "masked_full": (masked, False),
        "packed_exits": (packed, True), "masked_exits": (masked, True),
    }
    for encoder, exits in contestants.values():  # warm-up
        run(encoder, exits)
    seconds: Dict[str, List[float]] = {name: [] for name in contestants}
    for rep in range(args.reps):
        order = list(contestants) if rep % 2 == 0 else list(reversed(contestants))
        for name in order:
            seconds[name].append(run(*contestants[name]))
        print(rep, {name: round(values[-1], 3) for name, values in seconds.items()}, flush=True)

    # the cost model's view (multiply-adds), in the order the words were drawn
    order_words = numpy.concatenate([pieces.words_of(chunk) for wave in waves for chunk in wave])
    exits_by_word = numpy.zeros(pieces.n_words, dtype="int64")
    exits_by_word[order_words] = word_exit
    word_span = numpy.repeat(numpy.arange(len(lengths)), numpy.diff(pieces.word_offsets))
    other = lengths - numpy.bincount(word_span, weights=pieces.word_n_pieces, minlength=len(lengths))
    flops: Dict[str, Optional[float]] = {}
    for name, encoder in (("packed", packed), ("masked", masked)):
        cost, full = spans_cost(encoder.shape, pieces.word_n_pieces, pieces.word_offsets, other, exits_by_word)
        flops[name] = float(full.sum() / cost.sum())
    result = {
        "family": args.family, "layers": args.layers, "hidden": args.hidden, "heads": args.heads,
        "docs": len(docs), "words": n_words, "spans": int(len(lengths)), "batch_size": args.batch_size,
        "reps": args.reps, "threads": 1, "exit_shares": EXIT_SHARES[: args.layers],
        "mean_exit_layer": float(word_exit.mean()),
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "seconds": seconds,
        "words_per_second": {name: n_words / statistics.median(values) for name, values in seconds.items()},
        "packed_over_masked_full": paired_speedup(seconds["masked_full"], seconds["packed_full"]),
        "packed_over_masked_exits": paired_speedup(seconds["masked_exits"], seconds["packed_exits"]),
        "exit_speedup_packed": paired_speedup(seconds["packed_full"], seconds["packed_exits"]),
        "exit_speedup_masked": paired_speedup(seconds["masked_full"], seconds["masked_exits"]),
        "flops_speedup_packed": flops["packed"],
        "flops_speedup_masked": flops["masked"],
        "torch": torch.__version__,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
        rows = [
            f"# {args.family}: packed vs masked path ({args.layers} layers, hidden {args.hidden}, random weights)",
            "",
            f"{len(docs)} EWT dev sentences, {n_words} words, batches of {args.batch_size} spans, 1 thread, "
            f"{args.reps} interleaved repetitions; exits forced with mean layer {word_exit.mean():.2f}.",
            "",
            "| contestant | median s | words/s |",
            "|---|---|---|",
        ] + [
            f"| {name} | {result['median_seconds'][name]:.3f} | {result['words_per_second'][name]:.0f} |"
            for name in contestants
        ] + [
            "",
            f"packed / masked speed-up (paired median): full depth {result['packed_over_masked_full']:.2f}x, "
            f"with exits {result['packed_over_masked_exits']:.2f}x",
            f"exit speed-up over full depth: packed {result['exit_speedup_packed']:.2f}x "
            f"(cost model {flops['packed']:.2f}x), masked {result['exit_speedup_masked']:.2f}x "
            f"(cost model {flops['masked']:.2f}x)",
        ]
        Path(args.out + ".md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
