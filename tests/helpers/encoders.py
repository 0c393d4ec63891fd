"""Torch-level builders: a random BERT, an early-exit encoder on it, and
encoder batches made by hand (no tokenizer)."""
from typing import List, Sequence

import numpy
import torch
from torch import nn
from transformers import BertConfig, BertModel

from spacy_earlyexit.model import EarlyExitEncoder, EncoderBatch

N_LAYERS = 4
N_CLASSES = 5
VOCAB_SIZE = 60
CLS, SEP, PAD = 2, 3, 0


def random_bert(seed: int = 0, n_layers: int = N_LAYERS) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


def make_encoder(transformer: nn.Module, seed: int = 1, sharpen: float = 3.0) -> EarlyExitEncoder:
    """An encoder with random off-ramps. sharpen: their weights are scaled by
    this, so that uncertainties spread over [0, 1] (random heads alone give
    u close to 1 everywhere)."""
    torch.manual_seed(seed)
    encoder = EarlyExitEncoder(transformer, N_CLASSES, offramp_dropout=0.0).eval()
    with torch.no_grad():
        for ramp in encoder.offramps:
            ramp.linear.weight.mul_(sharpen)
    return encoder


def build_batch(spans: Sequence[Sequence[int]], seed: int = 0) -> EncoderBatch:
    """spans: per span, one item per slot between [CLS] and [SEP]: n > 0 is a
    word of n pieces, 0 a piece that belongs to no word."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [2 + sum(max(item, 1) for item in span) for span in spans]
    length = max(lengths)
    input_ids = torch.full((len(spans), length), PAD, dtype=torch.long)
    piece_word = torch.full((len(spans), length), -1, dtype=torch.long)
    word_span: List[int] = []
    word_slot: List[int] = []
    word_piece: List[int] = []
    for row, span in enumerate(spans):
        n = lengths[row]
        input_ids[row, :n] = torch.randint(5, VOCAB_SIZE, (n,), generator=generator)
        input_ids[row, 0], input_ids[row, n - 1] = CLS, SEP
        position, slot = 1, 0
        for item in span:
            if item == 0:
                position += 1
                continue
            piece_word[row, position : position + item] = len(word_span)
            word_span.append(row)
            word_slot.append(slot)
            word_piece.append(position)
            position += item
            slot += 1
    return EncoderBatch(
        input_ids=input_ids,
        lengths=torch.tensor(lengths),
        word_span=torch.tensor(word_span, dtype=torch.long),
        word_slot=torch.tensor(word_slot, dtype=torch.long),
        word_piece=torch.tensor(word_piece, dtype=torch.long),
        piece_word=piece_word,
    )


def random_spans(seed: int, n_spans: int, max_words: int = 9) -> List[List[int]]:
    """Spans of 1..max_words words of 1-3 pieces, some unowned pieces."""
    rng = numpy.random.default_rng(seed)
    spans = []
    for _ in range(n_spans):
        n_words = int(rng.integers(1, max_words + 1))
        items = [int(rng.choice([1, 1, 1, 2, 3])) for _ in range(n_words)]
        if rng.random() < 0.3:
            items.insert(int(rng.integers(0, len(items) + 1)), 0)
        spans.append(items)
    return spans
