"""Every encoder family docs/backbones.md lists as supported, as a new user would use
it: a tiny random model and a fast tokenizer of its kind in a folder.

1. At full depth, the early-exit encoder's hidden states and last off-ramp
   logits are those of the Hugging Face model's own forward pass.
2. Families on the packed path give what the masked path gives (every piece
   computed, exited ones frozen), in token mode with exits.
3. The component round trip: add_pipe with the folder as model.name,
   initialize, update, to_disk / spacy.load, identical annotations.
"""
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy
import pytest
import torch

from helpers.families import PACKED, WRITERS, write_family
from helpers.tiny_bert import POS_DATA, train_tiny_pipeline
from spacy_earlyexit.layers.loading import load_pretrained
from spacy_earlyexit.model import EarlyExitEncoder, EncoderBatch, ExitSettings, normalized_entropy
from spacy_earlyexit.model.families import BERT, DEBERTA, DISTILBERT, MODERNBERT, family_of

FAMILIES = list(WRITERS)
N_CLASSES = 5
TEXTS = [text for text, _ in POS_DATA] + [
    "Carol and Alice met Bob in Berlin and London yesterday , the weather is nice .",
]
EXPECTED_FAMILY = {
    "bert": BERT, "minilm": BERT, "roberta": BERT, "xlm-roberta": BERT, "electra": BERT,
    "distilbert": DISTILBERT, "deberta-v2": DEBERTA, "deberta-v2-conv": DEBERTA, "deberta": DEBERTA, "modernbert": MODERNBERT,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: write_family(root / name, name) for name in FAMILIES + ["deberta-v2-conv"]}


def load_encoder(folder: Path, packed=None) -> Tuple[object, EarlyExitEncoder]:
    tokenizer, transformer = load_pretrained(str(folder), {}, {})
    transformer.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masked path's notice
        torch.manual_seed(1)
        encoder = EarlyExitEncoder(transformer, N_CLASSES, offramp_dropout=0.0, packed=packed).eval()
    with torch.no_grad():
        for ramp in encoder.offramps:
            ramp.linear.weight.mul_(3.0)  # uncertainties spread over [0, 1]
    return tokenizer, encoder


def piece_batch(tokenizer, texts: List[str]) -> EncoderBatch:
    """Each text a span, right-padded; every non-special piece its own word."""
    encoded = tokenizer(texts, padding=True, return_special_tokens_mask=True, return_tensors="pt")
    real = encoded["attention_mask"].bool()
    words = real & ~encoded["special_tokens_mask"].bool()
    span, piece = words.nonzero(as_tuple=True)
    slot = torch.cat([torch.arange(int(n)) for n in words.sum(dim=1)])
    piece_word = torch.full(words.shape, -1, dtype=torch.long)
    piece_word[span, piece] = torch.arange(span.numel())
    return EncoderBatch(
        input_ids=encoded["input_ids"], lengths=real.sum(dim=1), word_span=span, word_slot=slot,
        word_piece=piece, piece_word=piece_word,
    )


@pytest.mark.parametrize("family", FAMILIES + ["deberta-v2-conv"])
def test_full_depth_equals_the_hugging_face_forward(folders, family: str) -> None:
    tokenizer, encoder = load_encoder(folders[family])
    assert encoder.family is EXPECTED_FAMILY[family]
    assert encoder.packed == (family in PACKED)
    batch = piece_batch(tokenizer, TEXTS)
    real = batch.real_mask()
    assert not bool(real.all())  # padding is masked, not just absent
    with torch.no_grad():
        ours = encoder(batch, ExitSettings(exit_mode="off"), output_hidden_states=True)
        theirs = encoder.transformer(batch.input_ids, attention_mask=real.long(), output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == encoder.n_layers + 1
    for mine, reference in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(mine[real], reference[real], atol=2e-5, rtol=1e-4)
    last = theirs.last_hidden_state[batch.word_span, batch.word_piece]  # ModernBERT: after final_norm
    with torch.no_grad():
        expected = encoder.offramps[-1](last)
    torch.testing.assert_close(ours.exit_logits, expected, atol=2e-5, rtol=1e-4)
    assert ours.exit_layer.tolist() == [encoder.n_layers] * batch.n_words


def clear_threshold(layer_logits: torch.Tensor, layer_active: torch.Tensor) -> float:
    """A threshold in the widest gap between the uncertainties of the middle
    half (so that float differences between paths cannot flip a decision)."""
    scores = numpy.sort(normalized_entropy(layer_logits[layer_active]).numpy())
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4 + 1]
    gaps = numpy.diff(middle)
    at = int(gaps.argmax())
    assert gaps[at] > 1e-4
    return float(middle[at] + gaps[at] / 2)


@pytest.mark.parametrize("family", PACKED)
@pytest.mark.parametrize("window", [0, 1])
def test_packed_path_equals_masked_path_with_exits(folders, family: str, window: int) -> None:
    tokenizer, packed = load_encoder(folders[family])
    _, masked = load_encoder(folders[family], packed=False)
    assert packed.packed and not masked.packed
    batch = piece_batch(tokenizer, TEXTS)
    with torch.no_grad():
        full = packed(batch, ExitSettings(exit_mode="off"), return_layer_logits=True)
        threshold = clear_threshold(full.layer_logits[:1], full.layer_active[:1])
        settings = ExitSettings(exit_mode="token", threshold=threshold, window=window)
        ours = packed(batch, settings, return_layer_logits=True)
        reference = masked(batch, settings, return_layer_logits=True)
    exits = ours.exit_layer.tolist()
    assert min(exits) < packed.n_layers == max(exits)  # some words left early, some did not
    assert exits == reference.exit_layer.tolist()
    torch.testing.assert_close(ours.layer_logits, reference.layer_logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours.exit_logits, reference.exit_logits, atol=2e-5, rtol=1e-4)


def test_encoder_shape_describes_each_family(folders) -> None:
    shapes = {family: load_encoder(folders[family])[1].shape for family in ("electra", "distilbert", "deberta-v2", "modernbert", "bert")}
    assert shapes["electra"].embedding_projection == 16
    assert shapes["distilbert"].intermediate_size == 64 and shapes["distilbert"].packed
    assert shapes["deberta-v2"].relative_positions == 2 * 8 * 2  # 2 x buckets, c2p and p2c
    assert not shapes["deberta-v2"].packed
    assert shapes["modernbert"].gated_feed_forward and not shapes["modernbert"].packed
    bert = shapes["bert"]
    assert (bert.embedding_projection, bert.gated_feed_forward, bert.relative_positions, bert.packed) == (0, False, 0, True)


def test_unknown_layouts_are_refused_by_name(folders) -> None:
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(ValueError, match="GPT2Model is not a supported encoder.*DistilBERT"):
        family_of(model)
    _, transformer = load_pretrained(str(folders["deberta-v2"]), {}, {})
    with pytest.raises(ValueError, match="cannot take the packed path"):
        EarlyExitEncoder(transformer, N_CLASSES, packed=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_component_round_trip(folders, family: str, tmp_path: Path) -> None:
    import spacy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nlp = train_tiny_pipeline(folders[family], "pos", steps=3)
    path = tmp_path / "pipeline"
    nlp.to_disk(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = spacy.load(path)
    assert loaded.get_pipe("earlyexit_tagger").model.shims[0].encoder.family is EXPECTED_FAMILY[family]
    for text in TEXTS:
        before, after = nlp(text), loaded(text)
        assert [t.pos_ for t in before] == [t.pos_ for t in after]
        assert all(t.pos_ for t in after)
        assert [t._.exit_layer for t in before] == [t._.exit_layer for t in after]
