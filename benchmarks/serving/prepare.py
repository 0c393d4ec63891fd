"""A copy of a POS pipeline with the token-exit setting the serving benchmark uses.

    python benchmarks/serving/prepare.py PIPELINES/pos/model-best PIPELINES/pos-token
"""
import sys

import spacy


def main(source: str, target: str) -> None:
    nlp = spacy.load(source)
    for name in nlp.pipe_names:
        component = nlp.get_pipe(name)
        if hasattr(component, "configure_exit"):
            component.configure_exit(exit_mode="token", threshold=0.05, window=0,
                                     threshold_multipliers=[1, 4, 16, 16, 16, 16])
    nlp.to_disk(target)


if __name__ == "__main__":
    main(*sys.argv[1:3])
