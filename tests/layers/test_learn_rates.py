"""EarlyExitTransformer.v1's training knobs: a frozen word-embedding matrix
gets no gradient and does not move; layer-wise rates scale each layer's
step (checked on the size of Adam's first step, which is the learning rate
times sign(gradient) for every element with a gradient)."""
import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import fix_random_seed

from helpers.tiny_bert import PLAIN_OFFRAMPS, POS_DATA

N_LAYERS = 3
SPANS = {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96}


def v2_pipeline(bert, **knobs):
    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(bert),
             "get_spans": SPANS, "encoder_learn_rate_scale": 0.5, **knobs}
    nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})
    examples = [Example.from_dict(nlp.make_doc(text), {"pos": gold}) for text, gold in POS_DATA]
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 1e-3
    optimizer.L2 = 0.0
    optimizer.grad_clip = 0.0
    return nlp, examples, optimizer


def parameters(nlp):
    encoder = nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder
    return {name: p.detach().clone() for name, p in encoder.named_parameters()}


def largest_step(before, after, prefix: str) -> float:
    return max(float((after[n] - before[n]).abs().max()) for n in before if n.startswith(prefix))


def test_frozen_word_embeddings_do_not_move(tiny_bert):
    nlp, examples, optimizer = v2_pipeline(tiny_bert, freeze_embeddings=True)
    before = parameters(nlp)
    nlp.update(examples, sgd=optimizer)
    after = parameters(nlp)
    assert torch.equal(before["transformer.embeddings.word_embeddings.weight"],
                       after["transformer.embeddings.word_embeddings.weight"])
    assert not torch.equal(before["transformer.embeddings.position_embeddings.weight"],
                           after["transformer.embeddings.position_embeddings.weight"])
    encoder = nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder
    assert encoder.transformer.embeddings.word_embeddings.weight.grad is None


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_layer_wise_rates_scale_each_layers_step(tiny_bert, decay):
    nlp, examples, optimizer = v2_pipeline(tiny_bert, layer_lr_decay=decay)
    before = parameters(nlp)
    nlp.update(examples, sgd=optimizer)
    after = parameters(nlp)
    rate = 1e-3
    assert largest_step(before, after, "offramps.") == pytest.approx(rate, rel=0.01)
    for layer in range(N_LAYERS):
        expected = rate * 0.5 * decay ** (N_LAYERS - 1 - layer)
        got = largest_step(before, after, f"transformer.encoder.layer.{layer}.")
        assert got == pytest.approx(expected, rel=0.01), (layer, got, expected)
    got = largest_step(before, after, "transformer.embeddings.")
    assert got == pytest.approx(rate * 0.5 * decay**N_LAYERS, rel=0.01)


def test_bad_decay_is_refused(tiny_bert):
    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(tiny_bert),
             "get_spans": SPANS, "layer_lr_decay": 0.0}
    with pytest.raises(ValueError, match="layer_lr_decay"):
        nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})
