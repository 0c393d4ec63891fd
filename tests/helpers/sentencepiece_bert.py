"""A tiny random BertModel with an XLM-R style SentencePiece (unigram,
metaspace) fast tokenizer, as multilingual-e5-small is converted: the
tokenizer is built from pieces by the package's own E5 tokenizer builder."""
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch

from helpers.tiny_bert import corpus_words

#: text the tests feed: leading, trailing and repeated spaces, tabs and
#: ideographic spaces, CJK without spaces, emoji (with modifiers and a ZWJ)
SPACING_TEXTS = [
    "  Alice lives in Paris .  ",
    "Bob   visited\tLondon  yesterday .",
    "東京は大きい。北京も大きい",
    "Alice 😀👍🏽 met Bob 👩‍💻 in Berlin !",
    "\u3000Paris\u3000is big .",
    " ",
    "",
    "Carol,Alice and   Bob...met",
]

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CJK = ["東京", "北京", "東", "京", "北", "は", "も", "大きい", "大", "き", "い", "。"]
EMOJI = ["😀", "👍", "🏽", "👩", "\u200d", "💻"]


def sentencepiece_pieces() -> List[Tuple[str, float]]:
    """Pieces and scores: the specials, the metaspace alone, every corpus word
    with and without a leading metaspace, a few word halves, single
    characters (so nothing is unknown), CJK words and emoji, then <mask>."""
    words = corpus_words()
    chars = sorted({c for w in words for c in w} | set(".,!?;:'-") | set("abcdefghijklmnopqrstuvwxyz"))
    pieces: List[Tuple[str, float]] = [(p, 0.0) for p in SPECIALS]
    pieces.append(("\u2581", -3.0))
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in words:
        add("\u2581" + word, -4.0 - 0.01 * len(pieces))
        add(word, -6.0 - 0.01 * len(pieces))
    for word in ("visit", "yester", "day", "ed", "Lon", "don"):
        add(word, -7.0)
    for char in chars + CJK + EMOJI:
        add(char, -8.0 - 0.1 * len(char))
        add("\u2581" + char, -8.5 - 0.1 * len(char))
    pieces.append(("<mask>", 0.0))
    return pieces


def write_sentencepiece_bert(path: Path, n_layers: int = 3, hidden: int = 32, seed: int = 0,
                             max_position: int = 64) -> Path:
    """Save a random BertModel and an XLMRobertaTokenizerFast (unigram over
    sentencepiece_pieces(), tabs and ideographic spaces normalized to spaces,
    runs of spaces to one) into `path`."""
    from transformers import BertConfig, BertModel

    from pretrained.e5_format import UnigramVocab  # scripts/pretrained (pytest's pythonpath)
    from pretrained.e5_tokenizer import build_e5_tokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    pieces = sentencepiece_pieces()
    vocab = UnigramVocab(
        pieces=[p for p, _ in pieces],
        scores=np.asarray([s for _, s in pieces], dtype=np.float32),
        bos_id=0, eos_id=2, pad_id=1, unk_id=3,
    )
    tokenizer = build_e5_tokenizer(vocab, {0x09: " ", 0x3000: " "}, model_max_length=max_position)
    config = BertConfig(
        vocab_size=len(pieces),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_position,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
