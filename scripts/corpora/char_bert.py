"""A randomly initialised character BERT for Chinese tasks, built from a corpus.

No Chinese pretrained encoder is reachable offline here, so the project can
build a small BERT whose vocabulary is the characters of the training corpus
and train it from scratch with the earlyexit_tagger. It is NOT pretrained:
expect far lower scores than with `bert-base-chinese`, which the same configs
accept as `name` unchanged.

    python scripts/char_bert.py corpus/zh/train.spacy assets/char-bert --layers 4 --hidden 256

The folder is saved with `save_pretrained` (BertModel + BertTokenizerFast) and
loads as the architecture's `name`. The tokenizer keeps case
(`do_lower_case=False`) and isolates CJK characters (`tokenize_chinese_chars`),
so every CJK character is one piece. Characters that the tokenizer does not
isolate (Latin letters, digits, full-width digits, ...) also get a `##`
continuation piece, so a run like "iPhone" becomes one piece per character
rather than one [UNK] for the whole run. Characters seen fewer than
`min_count` times are left out (they become [UNK], still one per character
for CJK).
"""
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def corpus_characters(paths: Iterable[Union[str, Path]]) -> Counter:
    """Counts of the non-whitespace characters of the docs in .spacy files."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    counts: Counter = Counter()
    vocab = Vocab()
    for path in paths:
        for doc in DocBin().from_disk(path).get_docs(vocab):
            counts.update(char for char in doc.text if not char.isspace())
    return counts


def isolated_characters(characters: Iterable[str]) -> List[str]:
    """The characters that BERT's pre-tokenizer (tokenize_chinese_chars=True)
    always makes a word of their own (CJK characters, punctuation): these need
    no `##` continuation piece. Asked of the tokenizers library itself."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    pre_tokenizer = BertPreTokenizer()
    isolated = []
    for char in characters:
        probe = normalizer.normalize_str(f"a{char}a")
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str(probe)]
        if char in words:
            isolated.append(char)
    return isolated


def char_vocab(counts: Counter, min_count: int = 1) -> List[str]:
    """Special tokens, the characters (most frequent first, ties by code
    point), then `##` pieces for the characters that can continue a word."""
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    chars = [c for c in chars if c not in SPECIAL_TOKENS]
    isolated = set(isolated_characters(chars))
    return list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars if c not in isolated]


def build_char_bert(
    vocab: Sequence[str],
    output_dir: Union[str, Path],
    n_layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: Optional[int] = None,
    max_position: int = 512,
    dropout: float = 0.1,
    seed: int = 0,
) -> Path:
    """Save a random BertModel and a BertTokenizerFast over `vocab` in output_dir.

    vocab: the pieces, starting with the special tokens (see char_vocab).
    intermediate: feed-forward size (default 4 * hidden).
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"the vocabulary lacks the special tokens {missing}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    vocab_file = output / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf8")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_position,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=list(vocab).index("[PAD]"),
    )
    BertModel(config).save_pretrained(output)
    tokenizer = BertTokenizerFast(
        vocab_file=str(vocab_file),
        do_lower_case=False,
        tokenize_chinese_chars=True,
        strip_accents=False,
        model_max_length=max_position,
    )
    tokenizer.save_pretrained(output)
    return output


def build_char_bert_from_corpora(
    corpora: Sequence[Union[str, Path]],
    output_dir: Union[str, Path],
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: Optional[int] = None,
    max_position: int = 512,
    dropout: float = 0.1,
    min_count: int = 1,
    seed: int = 0,
) -> Path:
    """build_char_bert on the characters of `corpora` (.spacy files), with a
    `char_bert.json` beside the weights that records how it was made."""
    counts = corpus_characters(corpora)
    vocab = char_vocab(counts, min_count)
    output = build_char_bert(
        vocab, output_dir, n_layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
        max_position=max_position, dropout=dropout, seed=seed,
    )
    info = {
        "pretrained": False,
        "corpus": [str(p) for p in corpora],
        "characters": len(counts),
        "vocab_size": len(vocab),
        "min_count": min_count,
        "layers": layers,
        "hidden": hidden,
        "seed": seed,
    }
    (output / "char_bert.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf8")
    return output
