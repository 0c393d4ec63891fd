"""How word pieces sit on gold Chinese words and entities, per piece_split.

    python benchmarks/chinese/piece_split/zh_piece_alignment.py BACKBONE --segment NAME=FILE.spacy ... \
        --ner NAME=FILE.spacy ... [--limit N] [--out FILE.json]

For each corpus the gold docs' text is cut into characters (spaCy's zh
tokenizer, segmenter "char"), tokenized with the backbone's tokenizer under
each piece_split (the package's own tokenize_docs, spans of 128 characters),
and counted: pieces per character (the encoder's sequence length, i.e. its
cost), the share of multi-character pieces, and for segmentation the share of
gold word boundaries that fall inside a piece (a character without a piece of
its own right after the boundary: with the first-piece representation that
boundary can never be predicted) and the share of words with both edges on
piece edges; for NER the same for entity edges.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy
import spacy
from spacy.tokens import DocBin
from spacy_transformers.span_getters import configure_strided_spans
from transformers import AutoTokenizer

from spacy_earlyexit.layers.piece_split import PIECE_SPLITS
from spacy_earlyexit.layers.wordpieces import tokenize_docs


def measure(
    tokenizer, docs, piece_split: str, edges: List[List[int]], whole: List[List[tuple]], kind: str
) -> Dict[str, float]:
    """edges: per doc, character offsets of gold edges (word or entity
    starts/ends, excluding 0 and len); whole: per doc, (start, end) char
    offsets of the gold units (words or entities)."""
    get_spans = configure_strided_spans(128, 96)
    n_predicted = n_correct = 0
    n_chars = n_pieces = n_multi = n_runs = crossed = n_edges = n_whole = n_units = 0
    for start in range(0, len(docs), 256):
        batch = docs[start : start + 256]
        pieces = tokenize_docs(batch, get_spans, tokenizer, 512, piece_split)
        own = pieces.token_sources[:, 0] >= 0
        n_pieces += int((pieces.piece_word >= 0).sum())
        offsets = pieces.token_offsets
        for i, doc in enumerate(batch):
            has = own[offsets[i] : offsets[i + 1]]
            n_chars += sum(1 for t in doc if not t.is_space)
            char_of = {t.idx: t.i for t in doc}
            # a token is "inside" a piece when it has no piece of its own
            cut = {t.idx for t in doc if has[t.i] or t.is_space}
            for edge in edges[start + i]:
                n_edges += 1
                crossed += int(edge in char_of and edge not in cut)
            for low, high in whole[start + i]:
                n_units += 1
                ok = (low in cut or low not in char_of) and (high in cut or high not in char_of)
                n_whole += int(ok)
            # the best segmentation with no boundary inside a piece: gold
            # words merged across the boundaries that fall inside a piece
            merged: List[tuple] = []
            for low, high in whole[start + i]:
                if merged and merged[-1][1] == low and low in char_of and low not in cut:
                    merged[-1] = (merged[-1][0], high)
                else:
                    merged.append((low, high))
            n_predicted += len(merged)
            n_correct += len(set(merged) & set(whole[start + i]))
        for i, doc in enumerate(batch):
            has = own[offsets[i] : offsets[i + 1]]
            run = 0
            for t in doc:
                if has[t.i]:
                    n_runs += 1
                    n_multi += int(run > 1)
                    run = 1
                elif not t.is_space:
                    run += 1
            n_multi += int(run > 1)
    return {
        "chars": n_chars,
        "pieces_per_char": n_pieces / max(n_chars, 1),
        # characters with a piece of their own whose piece covers more characters
        "multi_char_piece_share": n_multi / max(n_runs, 1),
        "edges": n_edges,
        "edges_inside_a_piece": crossed / max(n_edges, 1),
        "units": n_units,
        "units_on_piece_edges": n_whole / max(n_units, 1),
        # segmentation: token F of the best segmentation that never cuts a
        # piece (gold words merged across boundaries inside pieces); NER: the
        # entity F of recovering exactly the entities on piece edges
        "ceiling_f": 2 * n_correct / max(n_predicted + n_units, 1) if kind == "segment" else n_whole / max(n_units, 1),
    }



def word_edges(doc):
    edges, whole = [], []
    for token in doc:
        if token.is_space:
            continue
        whole.append((token.idx, token.idx + len(token)))
        if token.idx > 0:
            edges.append(token.idx)
        edges.append(token.idx + len(token))
    text_end = len(doc.text)
    return sorted({e for e in edges if 0 < e < text_end}), whole


def entity_edges(doc):
    edges, whole = set(), []
    for ent in doc.ents:
        whole.append((ent.start_char, ent.end_char))
        edges.update(e for e in (ent.start_char, ent.end_char) if 0 < e < len(doc.text))
    return sorted(edges), whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone")
    parser.add_argument("--segment", nargs="*", default=[])
    parser.add_argument("--ner", nargs="*", default=[])
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    nlp = spacy.blank("zh")
    results = {}
    for kind, items in (("segment", args.segment), ("ner", args.ner)):
        for item in items:
            name, path = item.split("=", 1)
            gold = list(DocBin().from_disk(path).get_docs(nlp.vocab))
            if args.limit:
                gold = gold[: args.limit]
            chars = [nlp.make_doc(d.text) for d in gold]
            pairs = [word_edges(d) if kind == "segment" else entity_edges(d) for d in gold]
            edges = [p[0] for p in pairs]
            whole = [p[1] for p in pairs]
            for piece_split in PIECE_SPLITS:
                row = measure(tokenizer, chars, piece_split, edges, whole, kind)
                results[f"{name}/{piece_split}"] = {"kind": kind, "docs": len(gold), **row}
                print(name, piece_split, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
