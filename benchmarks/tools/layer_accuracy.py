"""Dev score of every off-ramp at full depth, on the gold tokenization.

    python benchmarks/tools/layer_accuracy.py PIPELINE DEV.spacy [--out FILE.json]
"""
import argparse
import json
from pathlib import Path

import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("dev")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    nlp = spacy.load(args.pipeline)
    tagger = nlp.get_pipe("earlyexit_tagger")
    gold = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    examples = [
        Example(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]), d)
        for d in gold
    ]
    scores = nlp.evaluate(examples, component_cfg={"earlyexit_tagger": {"exit_mode": "off"}})
    key = tagger.task.score_keys[0]
    layers = {k: v for k, v in scores.items() if k.startswith(f"{key}_layer_")}
    result = {"pipeline": args.pipeline, "dev": args.dev, key: scores[key], "layers": layers}
    for name, value in layers.items():
        print(f"{name}: {value * 100:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
