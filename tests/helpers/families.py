"""Tiny random models of every supported encoder family, each written to a
folder with a fast tokenizer of its kind built here (no network):
WordPiece (BERT, MiniLM, ELECTRA, DistilBERT), byte-level BPE (RoBERTa,
ModernBERT), Unigram with U+2581 (XLM-R, DeBERTa-v2)."""
from pathlib import Path
from typing import Callable, Dict, List

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .tiny_bert import NER_DATA, POS_DATA, corpus_words

LAYERS, HIDDEN, HEADS, FFN, POSITIONS = 3, 32, 4, 64, 96
DROPOUT_FREE = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def corpus_texts() -> List[str]:
    return [text for text, _ in NER_DATA + POS_DATA] + [" ".join(corpus_words())]


def _wordpiece(path: Path, tokenizer_class, lowercase: bool = False):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w.lower() if lowercase else w for w in corpus_words()})
    chars = sorted({c for w in words for c in w})
    vocab = specials + words + [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    return tokenizer_class(vocab_file=str(path / "vocab.txt"), do_lower_case=lowercase)


def _byte_bpe(specials: List[str]) -> Tokenizer:
    """A byte-level BPE trained on the tiny corpus (offsets trimmed of the
    spaces the pieces carry, as RoBERTa's are)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(), trainer)
    return tokenizer


def _unigram(specials: List[str]) -> Tokenizer:
    """A SentencePiece-style Unigram (U+2581 for spaces) trained on the tiny corpus."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=150, special_tokens=specials, unk_token=specials[3], show_progress=False
    )
    tokenizer.train_from_iterator(corpus_texts(), trainer)
    return tokenizer


def _template(tokenizer: Tokenizer, cls: str, sep: str) -> None:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )


def write_bert(path: Path, seed: int) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = _wordpiece(path, BertTokenizerFast)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, **DROPOUT_FREE,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_minilm(path: Path, seed: int) -> None:
    """MiniLM is a BertModel: uncased, 12 heads of width 4 here (as its 384 / 12 = 32)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = _wordpiece(path, BertTokenizerFast, lowercase=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=LAYERS, num_attention_heads=12,
        intermediate_size=4 * 48, max_position_embeddings=POSITIONS, **DROPOUT_FREE,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_electra(path: Path, seed: int) -> None:
    """ELECTRA with embeddings narrower than the layers (embeddings_project)."""
    from transformers import ElectraConfig, ElectraModel, ElectraTokenizerFast

    tokenizer = _wordpiece(path, ElectraTokenizerFast)
    torch.manual_seed(seed)
    config = ElectraConfig(
        vocab_size=len(tokenizer), embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS, **DROPOUT_FREE,
    )
    ElectraModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_distilbert(path: Path, seed: int) -> None:
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    tokenizer = _wordpiece(path, DistilBertTokenizerFast)
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=HIDDEN, hidden_dim=FFN, n_layers=LAYERS, n_heads=HEADS,
        max_position_embeddings=POSITIONS, dropout=0.0, attention_dropout=0.0,
    )
    DistilBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_roberta(path: Path, seed: int) -> None:
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    backend = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend.post_processor = processors.RobertaProcessing(
        sep=("</s>", backend.token_to_id("</s>")), cls=("<s>", backend.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False,
    )
    tokenizer = RobertaTokenizerFast(tokenizer_object=backend, add_prefix_space=False)
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS + 2, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, type_vocab_size=1, **DROPOUT_FREE,
    )
    RobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_xlm_roberta(path: Path, seed: int) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    backend = _unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    _template(backend, "<s>", "</s>")
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=backend)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS + 2, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, type_vocab_size=1, **DROPOUT_FREE,
    )
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _deberta(path: Path, seed: int, **extra) -> None:
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2TokenizerFast

    backend = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
    _template(backend, "[CLS]", "[SEP]")
    tokenizer = DebertaV2TokenizerFast(tokenizer_object=backend)
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, pad_token_id=0, type_vocab_size=0,
        # DeBERTa-v3's attention: relative positions in buckets, no absolute ones
        relative_attention=True, position_buckets=8, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", position_biased_input=False,
        share_att_key=True, **DROPOUT_FREE, **extra,
    )
    DebertaV2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_deberta_v2(path: Path, seed: int) -> None:
    _deberta(path, seed)


def write_deberta_v2_conv(path: Path, seed: int) -> None:
    """DeBERTa-v2 with the convolution after the first layer (v2-xlarge style)."""
    _deberta(path, seed, conv_kernel_size=3, conv_act="gelu")


def write_deberta(path: Path, seed: int) -> None:
    """DeBERTa (v1): relative attention with absolute positions too, a
    byte-level BPE tokenizer as its own."""
    from transformers import DebertaConfig, DebertaModel, DebertaTokenizerFast

    backend = _byte_bpe(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))],
        ),
    ])
    tokenizer = DebertaTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]",
                                     sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = DebertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, pad_token_id=0, type_vocab_size=0,
        relative_attention=True, max_relative_positions=16, pos_att_type=["c2p", "p2c"], **DROPOUT_FREE,
    )
    DebertaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_modernbert(path: Path, seed: int) -> None:
    """ModernBERT with a local window (8 pieces) short enough for the test
    sentences to reach past it; global attention every other layer."""
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    backend = _byte_bpe(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))],
        ),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, local_attention=8,
        global_attn_every_n_layers=2, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, reference_compile=False,
    )
    ModernBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


#: family -> folder writer; what docs/backbones.md lists as supported
WRITERS: Dict[str, Callable[[Path, int], None]] = {
    "bert": write_bert,
    "minilm": write_minilm,
    "roberta": write_roberta,
    "xlm-roberta": write_xlm_roberta,
    "electra": write_electra,
    "distilbert": write_distilbert,
    "deberta-v2": write_deberta_v2,
    "deberta": write_deberta,
    "modernbert": write_modernbert,
}
#: families that take the packed path
PACKED = ("bert", "minilm", "roberta", "xlm-roberta", "electra", "distilbert")


def write_family(path: Path, family: str, seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    writer = WRITERS.get(family) or {"deberta-v2-conv": write_deberta_v2_conv}[family]
    writer(path, seed)
    return path
