"""A tiny random BERT with a SentencePiece (Unigram, Metaspace) tokenizer, as
XLM-R and multilingual-e5 have: multi-character Chinese pieces, some of which
cross the gold word and entity boundaries of the tiny corpora below."""
from pathlib import Path
from typing import Dict, List, Tuple

import torch

#: gold words separated by "|"
SP_SEGMENT_DATA = [
    "我|在|上海|工作",        # piece "在上" crosses 在|上海, "海工" crosses 上海|工作
    "北京|是|中国|的|首都",    # piece "的首" crosses 的|首都
    "他|在|上海|学习",
    "我们|在|北京|学习",
    "天安门|在|北京",
    "我|用|iPhone|12|看|新闻",
]
#: (text, entities as (start_char, end_char, label))
SP_NER_DATA = [
    ("我在上海工作", [(2, 4, "LOC")]),      # 上海 starts inside "在上", ends inside "海工"
    ("北京是中国的首都", [(0, 2, "LOC"), (3, 5, "LOC")]),
    ("他在上海学习", [(2, 4, "LOC")]),
    ("我们在北京学习", [(3, 5, "LOC")]),
    ("我用iPhone看新闻", [(2, 8, "ORG")]),
]

#: multi-character pieces and their scores (log probabilities): higher than
#: the sum of their characters' so that the Unigram model prefers them
MULTI_PIECES: Dict[str, float] = {
    "在上": -2.0, "海工": -2.0, "的首": -2.0, "北京": -2.5, "中国": -2.5, "首都": -3.5,
    "天安门": -3.0, "我们": -2.5, "学习": -2.5, "新闻": -2.5, "iPhone": -3.0, "12": -3.0,
    "▁我": -2.0,
}
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def sp_vocab() -> List[Tuple[str, float]]:
    """Specials, "▁", every character of the corpora, then MULTI_PIECES."""
    chars = set()
    for line in SP_SEGMENT_DATA:
        chars.update(line.replace("|", ""))
    for text, _ in SP_NER_DATA:
        chars.update(text)
    chars.update("作工看")
    vocab = [(s, 0.0) for s in SPECIALS] + [("▁", -3.0)]
    vocab += [(c, -5.0) for c in sorted(chars)]
    vocab += sorted(MULTI_PIECES.items())
    return vocab


def write_tiny_sentencepiece_bert(path: Path, n_layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """Save a random BertModel and a Unigram/Metaspace fast tokenizer into `path`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    vocab = sp_vocab()
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", model_max_length=64,
    )
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )
    BertModel(config).save_pretrained(path)
    return path
