"""The encoder's case embedding (EarlyExitEncoder(case_classes=K)) against an
independent computation with the Hugging Face modules: embeddings, plus the
case vector of each piece, through the plain BERT layers, into the off-ramps."""
import pytest
import torch

from helpers.encoders import N_CLASSES, build_batch, random_bert, random_spans
from spacy_earlyexit.model import EarlyExitEncoder, ExitSettings

K = 6


def case_grid(batch, seed: int = 0) -> torch.Tensor:
    """[S, T] a random case class (1..K) per word, copied to its pieces; 0 elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    word_case = torch.randint(1, K + 1, (batch.n_words,), generator=generator)
    grid = torch.zeros_like(batch.input_ids)
    owned = batch.piece_word >= 0
    grid[owned] = word_case[batch.piece_word[owned]]
    return grid


def encoder_with_case(seed: int = 0) -> EarlyExitEncoder:
    torch.manual_seed(seed)
    encoder = EarlyExitEncoder(random_bert(seed), N_CLASSES, offramp_dropout=0.0, case_classes=K).eval()
    with torch.no_grad():
        encoder.case_embedding.weight[1:].normal_(0.0, 1.0)
    return encoder


def reference_layer_logits(encoder: EarlyExitEncoder, batch) -> torch.Tensor:
    """[L, W, C] by the Hugging Face modules, at full depth."""
    bert = encoder.transformer
    real = batch.real_mask()
    hidden = bert.embeddings(input_ids=batch.input_ids) + encoder.case_embedding.weight[batch.piece_case]
    mask = (1.0 - real[:, None, None, :].float()) * torch.finfo(torch.float32).min
    logits = []
    for index, layer in enumerate(bert.encoder.layer):
        hidden = layer(hidden, attention_mask=mask)[0]
        states = hidden[batch.word_span, batch.word_piece]
        logits.append(encoder.offramps[index](states))
    return torch.stack(logits)


@pytest.mark.parametrize("packed", [True, False])
def test_case_embedding_matches_hugging_face_reference(packed):
    encoder = encoder_with_case()
    encoder.packed = packed
    batch = build_batch(random_spans(3, 6))
    batch.piece_case = case_grid(batch)
    with torch.no_grad():
        out = encoder(batch, return_layer_logits=True)
        expected = reference_layer_logits(encoder, batch)
    assert torch.allclose(out.layer_logits, expected, atol=1e-5)
    # the case classes matter: other classes give other logits
    batch.piece_case = case_grid(batch, seed=1)
    with torch.no_grad():
        other = encoder(batch, return_layer_logits=True)
    assert not torch.allclose(other.layer_logits, out.layer_logits, atol=1e-3)


def test_zero_case_embedding_leaves_the_encoder_unchanged():
    torch.manual_seed(0)
    plain = EarlyExitEncoder(random_bert(0), N_CLASSES, offramp_dropout=0.0).eval()
    cased = EarlyExitEncoder(random_bert(0), N_CLASSES, offramp_dropout=0.0, case_classes=K).eval()
    cased.offramps.load_state_dict(plain.offramps.state_dict())
    batch = build_batch(random_spans(4, 5))
    settings = ExitSettings(exit_mode="token", threshold=0.5, window=1)
    with torch.no_grad():
        expected = plain(batch, settings)
        batch.piece_case = case_grid(batch)
        got = cased(batch, settings)
    assert torch.equal(got.labels, expected.labels)
    assert torch.equal(got.exit_layer, expected.exit_layer)
    assert torch.allclose(got.exit_logits, expected.exit_logits, atol=1e-6)


def test_case_embedding_trains_and_padding_row_stays_zero():
    encoder = encoder_with_case()
    encoder.train()
    batch = build_batch(random_spans(5, 4))
    batch.piece_case = case_grid(batch)
    out = encoder(batch, return_layer_logits=True)
    out.layer_logits.sum().backward()
    grad = encoder.case_embedding.weight.grad
    assert grad is not None and float(grad[1:].abs().sum()) > 0
    assert float(grad[0].abs().sum()) == 0.0


def test_missing_or_misshapen_piece_case_is_refused():
    encoder = encoder_with_case()
    batch = build_batch(random_spans(6, 3))
    with pytest.raises(ValueError, match="piece_case"):
        encoder(batch)
    batch.piece_case = case_grid(batch)[:, :-1]
    with pytest.raises(ValueError, match="piece_case"):
        encoder(batch)
    with pytest.raises(ValueError, match="case_classes"):
        EarlyExitEncoder(random_bert(0), N_CLASSES, case_classes=-1)
