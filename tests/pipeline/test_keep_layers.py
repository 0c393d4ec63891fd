"""keep_layers (EarlyExitTransformer.v1): a pipeline on the first N layers
of a pretrained encoder, against Hugging Face's own N-layer model of the same
weights; saved and loaded with N layers; bad values refused."""
import pytest
import spacy
import torch
from transformers import AutoModel

from helpers.families import write_family
from helpers.tiny_bert import PLAIN_OFFRAMPS, POS_DATA, corpus_words, train_on, write_tiny_bert
from spacy.training import Example

from spacy_earlyexit.model.families import keep_first_layers

SPANS = {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 32, "stride": 24}


@pytest.fixture(scope="module")
def bert4(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert4"), corpus_words(), n_layers=4)


def build(bert, keep_layers):
    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(bert),
             "keep_layers": keep_layers, "get_spans": SPANS}
    nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})
    examples = [Example.from_dict(nlp.make_doc(text), {"pos": pos}) for text, pos in POS_DATA]
    return nlp, examples


def reference_tags(bert, nlp, texts):
    """Each token's label from Hugging Face's 2-layer model of the same
    checkpoint (its states after layer 2 at the token's first piece) through
    the pipeline's layer-2 off-ramp."""
    from transformers import AutoTokenizer

    tagger = nlp.get_pipe("earlyexit_tagger")
    offramp = tagger.model.shims[0].encoder.offramps[1].linear
    hf = AutoModel.from_pretrained(str(bert), num_hidden_layers=2, add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert))
    out = []
    for text in texts:
        words = text.split()
        encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            states = hf(**encoded).last_hidden_state[0]
        first = [encoded.word_ids().index(w) for w in range(len(words))]
        with torch.no_grad():
            classes = offramp(states[first]).argmax(-1).tolist()
        out.append([tagger.classes[c] for c in classes])
    return out


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "modernbert"])
def test_keep_first_layers_equals_the_hf_model_built_with_fewer_layers(tmp_path, family):
    path = write_family(tmp_path / family, family)
    cut = keep_first_layers(AutoModel.from_pretrained(str(path)).eval(), 2)
    reference = AutoModel.from_pretrained(str(path), num_hidden_layers=2).eval()
    ids = torch.tensor([[3, 7, 9, 11, 4]])
    with torch.no_grad():
        assert torch.allclose(cut(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state, atol=1e-5)
    assert cut.config.num_hidden_layers == 2
    rebuilt = AutoModel.from_config(cut.config)
    assert set(rebuilt.state_dict()) == set(cut.state_dict())


def test_pipeline_on_the_first_layers_matches_the_reference_and_round_trips(bert4):
    nlp, examples = build(bert4, keep_layers=2)
    train_on(nlp, examples, steps=5)
    encoder = nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder
    assert encoder.n_layers == 2 and len(encoder.offramps) == 2
    texts = [text for text, _ in POS_DATA]
    docs = list(nlp.pipe(texts))
    assert [[t.pos_ for t in doc] for doc in docs] == reference_tags(bert4, nlp, texts)
    assert {t._.exit_layer for doc in docs for t in doc} == {2}
    loaded = spacy.blank("en").from_config(nlp.config)
    loaded.from_bytes(nlp.to_bytes())
    assert loaded.get_pipe("earlyexit_tagger").model.shims[0].encoder.n_layers == 2
    assert [[t.pos_ for t in doc] for doc in loaded.pipe(texts)] == [[t.pos_ for t in doc] for doc in docs]


def test_keep_layers_null_keeps_every_layer(bert4):
    nlp, examples = build(bert4, keep_layers=None)
    nlp.initialize(lambda: examples)
    assert nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder.n_layers == 4


def test_layer_rates_count_the_kept_layers(bert4):
    nlp, examples = build(bert4, keep_layers=2)
    nlp.initialize(lambda: examples)
    shim = nlp.get_pipe("earlyexit_tagger").model.shims[0]
    shim.layer_lr_decay = 0.5
    scale = shim.encoder_learn_rate_scale
    assert shim.learn_rate_scale("transformer.encoder.layer.1.output.dense.weight") == pytest.approx(scale)
    assert shim.learn_rate_scale("transformer.encoder.layer.0.output.dense.weight") == pytest.approx(scale * 0.5)


@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_bad_keep_layers_is_refused_when_the_pipe_is_added(bert4, bad):
    with pytest.raises(Exception, match="keep_layers"):
        build(bert4, keep_layers=bad)


def test_more_layers_than_the_encoder_has_is_refused_naming_both(bert4):
    nlp, examples = build(bert4, keep_layers=5)
    with pytest.raises(ValueError, match="keep_layers must be an integer from 1 to the encoder's 4 layers; got 5"):
        nlp.initialize(lambda: examples)
