"""case_features (EarlyExitTransformer.v1) on an uncased tiny BERT: words that
differ only in case get the same pieces, so only the case embedding can tell
them apart; pipelines keep it through serialization."""
import pytest
import spacy
from spacy.training import Example

from helpers.tiny_bert import PLAIN_OFFRAMPS, train_until_perfect, write_tiny_bert

NAMES = ["apple", "paris", "bush", "jordan", "china"]
#: the same sentence twice, the name lowercase (a noun) or capitalized (a proper noun)
DATA = [
    (f"we saw {form} today", ["PRON", "VERB", pos, "NOUN"])
    for name in NAMES
    for form, pos in ((name, "NOUN"), (name.capitalize(), "PROPN"))
]


SPANS = {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 32, "stride": 24}


@pytest.fixture(scope="module")
def uncased_bert(tmp_path_factory):
    words = sorted({w for text, _ in DATA for w in text.split()})
    return write_tiny_bert(tmp_path_factory.mktemp("uncased"), words, n_layers=2, lowercase=True)


def build(bert, case_features: bool):
    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(bert),
             "case_features": case_features, "get_spans": SPANS}
    nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})
    examples = [Example.from_dict(nlp.make_doc(text), {"pos": pos}) for text, pos in DATA]
    return nlp, examples


def test_uncased_encoder_tells_case_apart_only_with_case_features(uncased_bert):
    nlp, examples = build(uncased_bert, case_features=True)
    assert train_until_perfect(nlp, examples, "pos_acc", max_steps=400)["pos_acc"] == 1.0
    plain, plain_examples = build(uncased_bert, case_features=False)
    scores = train_until_perfect(plain, plain_examples, "pos_acc", max_steps=100)
    # the two forms of a name are the same pieces: one of each pair is wrong
    assert scores["pos_acc"] <= 1.0 - len(NAMES) / sum(len(pos) for _, pos in DATA) + 1e-9


def test_case_features_survive_serialization_and_batching(uncased_bert):
    nlp, examples = build(uncased_bert, case_features=True)
    train_until_perfect(nlp, examples, "pos_acc", max_steps=400)
    texts = [text for text, _ in DATA]
    expected = [[t.pos_ for t in doc] for doc in nlp.pipe(texts)]
    assert expected == [pos for _, pos in DATA]
    loaded = spacy.blank("en").from_config(nlp.config)
    loaded.from_bytes(nlp.to_bytes())
    assert loaded.config["components"]["earlyexit_tagger"]["model"]["case_features"] is True
    assert [[t.pos_ for t in doc] for doc in loaded.pipe(texts, batch_size=3)] == expected
    assert [[t.pos_ for t in loaded(text)] for text in texts] == expected


def test_case_embedding_trains_at_offramp_rate_and_freezes_with_encoder(uncased_bert):
    nlp, examples = build(uncased_bert, case_features=True)
    nlp.initialize(lambda: examples)
    shim = nlp.get_pipe("earlyexit_tagger").model.shims[0]
    assert shim.learn_rate_scale("case_embedding.weight") == 1.0
    shim.freeze_encoder = True
    assert shim.learn_rate_scale("case_embedding.weight") is None


def test_case_features_must_be_a_bool(uncased_bert):
    nlp = spacy.blank("en")
    model = {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(uncased_bert),
             "case_features": "yes", "get_spans": SPANS}
    with pytest.raises(Exception, match="case_features"):
        nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})


def test_quantized_case_features_pipeline_keeps_its_architecture(uncased_bert):
    from spacy_earlyexit.pipeline.quantize import quantize_pipeline

    nlp, examples = build(uncased_bert, case_features=True)
    train_until_perfect(nlp, examples, "pos_acc", max_steps=400)
    quantize_pipeline(nlp)
    model_config = nlp.config["components"]["earlyexit_tagger"]["model"]
    assert model_config["@architectures"] == "spacy_earlyexit.EarlyExitTransformer.v1"
    assert model_config["case_features"] is True and model_config["precision"] == "int8"
    loaded = spacy.blank("en").from_config(nlp.config)
    loaded.from_bytes(nlp.to_bytes())
    got = [[t.pos_ for t in doc] for doc in loaded.pipe([text for text, _ in DATA])]
    # int8 keeps the case distinction the float32 pipeline learned
    assert got == [pos for _, pos in DATA]
