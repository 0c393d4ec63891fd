"""The factory's default model is the NER recipe's architecture (context
off-ramps on every layer, case features), its defaults agree with the
registered architecture's own, and partial "model" blocks in add_pipe are
merged into it."""
import inspect

import spacy
from spacy.training import Example
from thinc.api import Config

from spacy_earlyexit.model.offramp import ContextOffRamp
from spacy_earlyexit.pipeline.architectures import EarlyExitTransformer_v1
from spacy_earlyexit.pipeline.factory import DEFAULT_MODEL_CONFIG

from helpers.tiny_bert import NER_DATA

PIPE = "earlyexit_tagger"
ARCHITECTURE = "spacy_earlyexit.EarlyExitTransformer.v1"


def test_default_model_block_agrees_with_the_architecture_signature():
    block = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]
    assert block["@architectures"] == ARCHITECTURE
    for name, parameter in inspect.signature(EarlyExitTransformer_v1).parameters.items():
        if name in ("name", "get_spans", "nO") or parameter.default is inspect.Parameter.empty:
            continue
        assert block[name] == parameter.default, name
    assert block["case_features"] is True and block["offramp_context_layers"] == "all"


def test_partial_model_blocks_are_merged_into_the_default(tiny_bert):
    for partial in (
        {"name": str(tiny_bert)},
        {"@architectures": ARCHITECTURE, "name": str(tiny_bert)},
        {"name": str(tiny_bert), "offramp_hidden": 16},
    ):
        nlp = spacy.blank("en")
        nlp.add_pipe(PIPE, config={"task": "ner", "model": partial})
        model = nlp.config["components"][PIPE]["model"]
        assert model["get_spans"]["@span_getters"] == "spacy-transformers.strided_spans.v1", partial
        assert model["offramp_hidden"] == partial.get("offramp_hidden", 384)


def test_default_model_trains_with_context_offramps_and_case_features(tiny_bert):
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": "ner", "model": {"name": str(tiny_bert), "offramp_hidden": 16}})
    examples = [Example.from_dict(nlp.make_doc(text), {"entities": gold}) for text, gold in NER_DATA]
    optimizer = nlp.initialize(lambda: examples)
    nlp.update(examples, sgd=optimizer)
    encoder = nlp.get_pipe(PIPE).model.shims[0].encoder
    assert all(isinstance(ramp, ContextOffRamp) for ramp in encoder.offramps)
    assert encoder.case_embedding is not None
    doc = nlp(NER_DATA[0][0])
    assert len(doc._.exit_layers) == len(doc)
