"""Score and speed of Chinese pipelines side by side (e.g. the same recipe
trained with piece_split "none" and "tokens"), at full depth.

    python benchmarks/chinese/piece_split/zh_piece_split_speed.py --model none=PIPELINE --model tokens=PIPELINE \
        --test TEST.spacy [--repetitions 3] [--slice-docs 250] [--limit N] [--out FILE.json]

PIPELINE@SPLIT loads PIPELINE with its piece_split replaced by SPLIT (same
weights, another piece split: for speed; its score is of a model trained on
other pieces).

Every pipeline is scored on the test docs (nlp.evaluate: token_f for
segmentation, ents_f for NER) and timed with nlp.pipe (batches of 1,024
docs, one torch thread), interleaved on slices of docs in one process
(spacy_earlyexit.tuning.timing); the speed ratio is the median over
repetitions of the paired ratios against the first model.
"""
import argparse
import json
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example

import spacy_earlyexit.pipeline.architectures  # noqa: F401 (v3 registered)
from spacy_earlyexit.tuning.timing import Contestant, fresh_docs, paired_speedup, time_interleaved, time_pipe


def load(spec: str):
    """PIPELINE or PIPELINE@SPLIT (piece_split replaced)."""
    path, _, piece_split = spec.partition("@")
    nlp = spacy.load(path)
    if piece_split:
        nlp.get_pipe("earlyexit_tagger").model.attrs["piece_split"] = piece_split
    return nlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--slice-docs", type=int, default=250)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = dict(item.split("=", 1) for item in args.model)
    pipelines = {name: load(path) for name, path in models.items()}
    first = next(iter(pipelines.values()))
    gold = list(DocBin().from_disk(args.test).get_docs(first.vocab))
    if args.limit:
        gold = gold[: args.limit]
    n_chars = sum(len(d.text) for d in gold)
    results = {}
    contestants = []
    for name, nlp in pipelines.items():
        task = nlp.get_pipe("earlyexit_tagger").task
        key = task.score_keys[0]
        examples = [Example(doc, ref) for doc, ref in zip(fresh_docs(nlp, gold), gold)]
        scores = nlp.evaluate(examples, component_cfg={"earlyexit_tagger": {"exit_mode": "off"}})
        results[name] = {"pipeline": models[name], key: scores[key], "scores": {
            k: v for k, v in scores.items() if isinstance(v, float)}}
        print(name, key, round(scores[key] * 100, 2), flush=True)
        docs = fresh_docs(nlp, gold)

        def run(part, nlp=nlp, docs=docs):
            return time_pipe(nlp, [d.copy() for d in docs[part]], 1024, {"exit_mode": "off"})[0]

        contestants.append(Contestant(name, run))
    seconds = time_interleaved(contestants, len(gold), repetitions=args.repetitions, slice_docs=args.slice_docs)
    base = contestants[0].name
    for name in pipelines:
        median = sorted(seconds[name])[len(seconds[name]) // 2]
        results[name]["seconds"] = seconds[name]
        results[name]["chars_per_s"] = n_chars / median
        results[name]["speed_vs_" + base] = paired_speedup(seconds[base], seconds[name])
        print(name, "chars/s", round(n_chars / median), "speed vs", base, results[name]["speed_vs_" + base])
    if args.out:
        Path(args.out).write_text(json.dumps({"test": args.test, "docs": len(gold), "chars": n_chars,
                                              "repetitions": args.repetitions, "models": results}, indent=2))


if __name__ == "__main__":
    main()
