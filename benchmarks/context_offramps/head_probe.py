"""Which off-ramp head reads a trained pipeline's lowest layers best?

    python benchmarks/context_offramps/head_probe.py PIPELINE TRAIN.spacy DEV.spacy \
        [--layers 1,2,3] [--limit N] [--epochs 4] [--threads 2] [--out FILE.json]

The pipeline's encoder is frozen (eval mode); each word is its first piece's
state after layer l (gold tokenization). Four heads are trained per layer on
the same states (AdamW, lr 1e-3 one-cycle, batches of 256 words, dropout
0.1) and scored on DEV by POS accuracy: linear (the paper's off-ramp), an
MLP (384 GELU units), and both again on the concatenated states of the word
and its neighbours either side in the sentence (zeros at the edges). A probe
on frozen states, not a trained off-ramp: it says which head the states
support, before paying for a training run.
"""
import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import spacy
import torch
from spacy.tokens import Doc, DocBin

from spacy_earlyexit.layers.early_exit_transformer import _tokenize, _waves
from spacy_earlyexit.model.exit_settings import ExitSettings

PIPE = "earlyexit_tagger"


def word_states(nlp, path: str, layers: List[int], limit: int) -> Tuple[Dict[int, numpy.ndarray], List[str], numpy.ndarray]:
    """({layer: [W, d] states}, [W] gold UPOS, [W] doc of each word)."""
    gold = list(DocBin().from_disk(path).get_docs(nlp.vocab))[: limit or None]
    docs = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold]
    model = nlp.get_pipe(PIPE).model
    encoder = model.shims[0].encoder.eval()
    pieces, pad_id = _tokenize(model, docs)
    states = {layer: numpy.zeros((pieces.n_words, encoder.hidden_size), "float32") for layer in layers}
    word_doc = numpy.repeat(pieces.span_doc, numpy.diff(pieces.word_offsets))
    labels = [gold[d][t].pos_ for d, t in zip(word_doc, pieces.word_token)]
    size = model.attrs["span_batch_size"]
    with torch.no_grad():
        for wave in _waves(pieces, size, size * 64):
            for chunk in wave:
                batch = pieces.encoder_batch(chunk, pad_id)
                out = encoder(batch, ExitSettings(max_layer=max(layers)), output_hidden_states=True)
                words = pieces.words_of(chunk)
                for layer in layers:
                    states[layer][words] = out.hidden_states[layer][batch.word_span, batch.word_piece].numpy()
    return states, labels, word_doc


def with_neighbours(states: numpy.ndarray, word_doc: numpy.ndarray) -> torch.Tensor:
    """[W, 3d]: each word's state, its left and right neighbour's (same doc; zeros outside)."""
    x = torch.from_numpy(states)
    padded = torch.cat([x, torch.zeros(1, x.shape[1])])
    index = torch.arange(len(x))
    left = torch.where(torch.from_numpy(numpy.r_[False, word_doc[1:] == word_doc[:-1]]), index - 1, len(x))
    right = torch.where(torch.from_numpy(numpy.r_[word_doc[:-1] == word_doc[1:], False]), index + 1, len(x))
    return torch.cat([x, padded[left], padded[right]], 1)


def train_head(x: torch.Tensor, y: torch.Tensor, x_dev: torch.Tensor, y_dev: torch.Tensor,
               n_classes: int, hidden: int, epochs: int) -> float:
    torch.manual_seed(0)
    d = x.shape[1]
    if hidden:
        head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(d, hidden), torch.nn.GELU(),
                                   torch.nn.Dropout(0.1), torch.nn.Linear(hidden, n_classes))
    else:
        head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(d, n_classes))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    steps = epochs * (len(x) // 256)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - 255, 256):
            batch = order[start: start + 256]
            loss = torch.nn.functional.cross_entropy(head(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    head.eval()
    with torch.no_grad():
        return float((head(x_dev).argmax(1) == y_dev).float().mean()) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("train")
    parser.add_argument("dev")
    parser.add_argument("--layers", default="1,2,3")
    parser.add_argument("--limit", type=int, default=0, help="first N training docs (0: all)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = [int(layer) for layer in args.layers.split(",")]
    nlp = spacy.load(args.pipeline)
    started = time.time()
    train, train_labels, train_doc = word_states(nlp, args.train, layers, args.limit)
    dev, dev_labels, dev_doc = word_states(nlp, args.dev, layers, 0)
    classes = sorted(set(train_labels) | set(dev_labels))
    y = torch.tensor([classes.index(c) for c in train_labels])
    y_dev = torch.tensor([classes.index(c) for c in dev_labels])
    print(f"{len(y)} training words, {len(y_dev)} dev words, states in {time.time() - started:.0f} s")
    results: Dict[str, Dict[str, float]] = {}
    for layer in layers:
        own, own_dev = torch.from_numpy(train[layer]), torch.from_numpy(dev[layer])
        window, window_dev = with_neighbours(train[layer], train_doc), with_neighbours(dev[layer], dev_doc)
        results[str(layer)] = {
            "linear": train_head(own, y, own_dev, y_dev, len(classes), 0, args.epochs),
            "mlp": train_head(own, y, own_dev, y_dev, len(classes), 384, args.epochs),
            "linear+neighbours": train_head(window, y, window_dev, y_dev, len(classes), 0, args.epochs),
            "mlp+neighbours": train_head(window, y, window_dev, y_dev, len(classes), 384, args.epochs),
        }
        print(f"layer {layer}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[str(layer)].items()), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"pipeline": args.pipeline, "layers": results}, indent=2))


if __name__ == "__main__":
    main()
