"""Tiny random BERTs written to disk (no network), tiny corpora, and the
one training loop the tests use."""
from pathlib import Path
from typing import List

import torch

NER_DATA = [
    ("Alice lives in Paris .", [(0, 5, "PER"), (15, 20, "LOC")]),
    ("Bob visited London yesterday .", [(0, 3, "PER"), (12, 18, "LOC")]),
    ("Paris is big .", [(0, 5, "LOC")]),
    ("Carol and Alice met Bob in Berlin .", [(0, 5, "PER"), (10, 15, "PER"), (20, 23, "PER"), (27, 33, "LOC")]),
    ("The weather is nice .", []),
    ("Berlin and London are cities .", [(0, 6, "LOC"), (11, 17, "LOC")]),
]

POS_DATA = [
    ("Alice lives in Paris .", ["PROPN", "VERB", "ADP", "PROPN", "PUNCT"]),
    ("Bob visited London yesterday .", ["PROPN", "VERB", "PROPN", "NOUN", "PUNCT"]),
    ("The weather is nice .", ["DET", "NOUN", "AUX", "ADJ", "PUNCT"]),
    ("Carol and Alice met Bob .", ["PROPN", "CCONJ", "PROPN", "VERB", "PROPN", "PUNCT"]),
    ("Berlin is a city .", ["PROPN", "AUX", "DET", "NOUN", "PUNCT"]),
]

EXTRA_WORDS = "hello world test text long doc emoji mixed word the a is".split()


def write_tiny_bert(
    path: Path,
    words: List[str],
    n_layers: int = 3,
    hidden: int = 32,
    seed: int = 0,
    max_position: int = 64,
    lowercase: bool = False,
) -> Path:
    """Save a random BertModel and a word-piece vocab.txt into `path`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = sorted({w.lower() if lowercase else w for w in words})
    chars = sorted({c for w in pieces for c in w})
    vocab = specials + pieces + [c for c in chars if c not in pieces] + [f"##{c}" for c in chars]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_position,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(path)
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=lowercase).save_pretrained(path)
    return path


def corpus_words() -> List[str]:
    words = set(EXTRA_WORDS)
    for text, _ in NER_DATA + POS_DATA:
        words.update(text.split())
    return sorted(words)


#: the gold of each tiny dataset, as Example.from_dict keys
GOLD_KEYS = {"ner": "entities", "pos": "pos", "tag": "tags"}


#: the paper's off-ramps (dropout + linear) and no case features: the tests
#: calibrated on tiny random models build these; the factory's default model
#: (context off-ramps, case features) has tests of its own
PLAIN_OFFRAMPS = {"case_features": False, "offramp_context_layers": 0, "offramp_hidden": 0}


def train_tiny_pipeline(bert: Path, task: str, steps: int, **component_config):
    """A blank English pipeline with an earlyexit_tagger for `task` ("ner" on
    NER_DATA; "pos" or "tag" on POS_DATA) on `bert`, updated `steps` times
    on its whole dataset with a fixed seed (lr 1e-3)."""
    import spacy
    from spacy.training import Example

    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "name": str(bert), **component_config.pop("model", {})}
    config = {"task": task, "model": model, **component_config}
    nlp.add_pipe("earlyexit_tagger", config=config)
    data = NER_DATA if task == "ner" else POS_DATA
    examples = [Example.from_dict(nlp.make_doc(text), {GOLD_KEYS[task]: gold}) for text, gold in data]
    return train_on(nlp, examples, steps)


def train_on(nlp, examples, steps: int):
    """Initialize `nlp` on `examples` and update it `steps` times on all of
    them, with a fixed seed and lr 1e-3."""
    from spacy.util import fix_random_seed

    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 1e-3
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def train_until_perfect(nlp, examples, key: str, max_steps: int = 300):
    """Initialize `nlp` on `examples` and update it (fixed seed, lr 3e-3, no
    dropout) until its `key` score on them is 1.0, checked every 25 steps,
    or max_steps. Returns the last scores."""
    from spacy.util import fix_random_seed

    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 3e-3
    scores = {}
    for step in range(1, max_steps + 1):
        nlp.update(examples, sgd=optimizer, drop=0.0)
        if step % 25 == 0:
            scores = nlp.evaluate(examples)
            if scores[key] == 1.0:
                break
    return scores
