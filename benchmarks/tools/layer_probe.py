"""Linear probes on every layer of a frozen backbone: which layers carry a task.

    python benchmarks/tools/layer_probe.py BACKBONE TRAIN.spacy TEST.spacy \
        [--task ner|pos] [--steps 300 3000] [--learn-rate 1e-3] [--threads 1] [--out FILE.json]

Each word is represented by its first piece's hidden state after layer l
(the backbone untouched, no fine-tuning); a linear classifier per layer is
trained with Adam on batches of 500 words of TRAIN and scored on TEST: token
accuracy (pos) or token-level F1 of the non-O classes (ner: B-X / I-X per
word, not entity F). With few steps this shows how fast an off-ramp can learn
a layer; with many, how much the layer holds. multilingual-e5-small on
Universal NER EWT: benchmarks/ner_recipe/e5_layer_probe.md.
"""
import argparse
import json
import time
from pathlib import Path
from typing import List, Tuple

import spacy
import torch
from spacy.tokens import Doc, DocBin
from transformers import AutoModel, AutoTokenizer


def word_label(doc: Doc, task: str) -> List[str]:
    if task == "pos":
        return [token.pos_ for token in doc]
    return [token.ent_iob_ + "-" + token.ent_type_ if token.ent_type_ else "O" for token in doc]


def features(docs: List[Doc], tokenizer, model, task: str, labels: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> ([words, layers, d] first-piece states, [words] label ids); words
    whose pieces fall beyond 512 are left out."""
    states, ids = [], []
    with torch.no_grad():
        for doc in docs:
            words = [token.text for token in doc]
            encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt", truncation=True, max_length=512)
            hidden = model(**encoded, output_hidden_states=True).hidden_states[1:]
            first = {}
            for index, word in enumerate(encoded.word_ids()):
                if word is not None and word not in first:
                    first[word] = index
            kept = [w for w in range(len(words)) if w in first]
            states.append(torch.stack([layer[0, [first[w] for w in kept]] for layer in hidden], 1))
            gold = word_label(doc, task)
            for w in kept:
                if gold[w] not in labels:
                    labels.append(gold[w])
                ids.append(labels.index(gold[w]))
    return torch.cat(states), torch.tensor(ids)


def score(predicted: torch.Tensor, gold: torch.Tensor, task: str, outside: int) -> float:
    if task == "pos":
        return float((predicted == gold).float().mean())
    hits = int(((predicted == gold) & (gold != outside)).sum())
    return 2 * hits / max(int((predicted != outside).sum()) + int((gold != outside).sum()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone")
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--task", choices=("ner", "pos"), default="ner")
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--learn-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nlp = spacy.blank("xx")
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    model = AutoModel.from_pretrained(args.backbone, add_pooling_layer=False).eval()
    labels = ["O"] if args.task == "ner" else []
    start = time.perf_counter()
    train_x, train_y = features(list(DocBin().from_disk(args.train).get_docs(nlp.vocab)), tokenizer, model, args.task, labels)
    test_x, test_y = features(list(DocBin().from_disk(args.test).get_docs(nlp.vocab)), tokenizer, model, args.task, labels)
    print(f"features: {tuple(train_x.shape)} train, {tuple(test_x.shape)} test, {time.perf_counter() - start:.0f} s")
    result = {
        "backbone": args.backbone, "train": args.train, "test": args.test, "task": args.task,
        "learn_rate": args.learn_rate, "batch_words": 500,
        "state_std_per_layer": [round(float(train_x[:, l].std(0).mean()), 4) for l in range(train_x.shape[1])],
        "probes": {},
    }
    for steps in args.steps:
        row = []
        for layer in range(train_x.shape[1]):
            x, test = train_x[:, layer], test_x[:, layer]
            probe = torch.nn.Linear(x.shape[1], len(labels))
            optimizer = torch.optim.Adam(probe.parameters(), args.learn_rate)
            generator = torch.Generator().manual_seed(0)
            for _ in range(steps):
                batch = torch.randint(0, len(x), (500,), generator=generator)
                loss = torch.nn.functional.cross_entropy(probe(x[batch]), train_y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                row.append(round(100 * score(probe(test).argmax(-1), test_y, args.task, 0), 2))
        result["probes"][str(steps)] = row
        print(f"{steps} steps, per layer:", " / ".join(f"{v:.1f}" for v in row))
    print("per-dimension std of the states over words, per layer:", result["state_std_per_layer"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
