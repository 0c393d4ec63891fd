"""int8 pipelines: `quantize`, saving and loading, the dial on int8, and the
refusals (training, mismatched or corrupt int8 files)."""
import shutil
from pathlib import Path

import pytest
import spacy
import srsly
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from spacy.training import Example

from spacy_earlyexit.cli import main as cli_main
from spacy_earlyexit.model.quantization import Int8Linear
from spacy_earlyexit.pipeline.quantize import quantize_pipeline

from helpers.tiny_bert import PLAIN_OFFRAMPS, GOLD_KEYS, POS_DATA, corpus_words, train_tiny_pipeline, write_tiny_bert

TAGGER = "earlyexit_tagger"
TEXTS = [text for text, _ in POS_DATA] + [
    "Alice is in Berlin .", "Bob and Carol visited Paris yesterday .", "The city is nice .",
    "London is a big city and Paris is nice .", "hello world , this is a test text .",
] * 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny POS pipeline trained at float32, saved."""
    bert = write_tiny_bert(tmp_path_factory.mktemp("bert"), corpus_words(), n_layers=3, hidden=64)
    nlp = train_tiny_pipeline(bert, "pos", steps=60)
    folder = tmp_path_factory.mktemp("float32") / "pipeline"
    nlp.to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("int8") / "pipeline"
    cli_main(["quantize", str(trained), str(output)])
    return output


def results(docs):
    return [([t.pos_ for t in doc], [t._.exit_layer for t in doc]) for doc in docs]


@pytest.mark.parametrize("overrides", [{}, {"exit_mode": "token", "threshold": 0.3}, {"exit_mode": "sentence", "threshold": 0.3}])
def test_quantize_then_load_gives_the_in_memory_int8_results(trained, tmp_path, overrides):
    nlp = spacy.load(trained)
    quantize_pipeline(nlp)
    before = results(nlp.pipe(TEXTS, component_cfg={TAGGER: overrides}))
    nlp.to_disk(tmp_path / "q")
    loaded = spacy.load(tmp_path / "q")
    assert results(loaded.pipe(TEXTS, component_cfg={TAGGER: overrides})) == before
    assert loaded.get_pipe(TAGGER).model.shims[0].precision == "int8"


def test_the_config_says_int8(quantized):
    nlp = spacy.load(quantized)
    model = nlp.config["components"][TAGGER]["model"]
    assert model["precision"] == "int8"
    assert model["@architectures"] == "spacy_earlyexit.EarlyExitTransformer.v1"
    encoder = nlp.get_pipe(TAGGER).model.shims[0].encoder
    assert isinstance(encoder.layers[0].attention.self.query, Int8Linear)
    assert isinstance(encoder.layers[0].output.dense, Int8Linear)


def test_int8_labels_agree_with_float32_at_full_depth(trained, quantized):
    float_docs = list(spacy.load(trained).pipe(TEXTS))
    int8_docs = list(spacy.load(quantized).pipe(TEXTS))
    pairs = [(a.pos_, b.pos_) for x, y in zip(float_docs, int8_docs) for a, b in zip(x, y)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    assert agreement >= 0.98
    # the trained model is right on its training data, in int8 too
    gold = [pos for _, tags in POS_DATA for pos in tags]
    predicted = [t.pos_ for doc in int8_docs[: len(POS_DATA)] for t in doc]
    assert sum(a == b for a, b in zip(gold, predicted)) / len(gold) >= 0.9


def test_int8_dial_threshold_zero_and_one(quantized):
    nlp = spacy.load(quantized)
    off = results(nlp.pipe(TEXTS))
    zero = results(nlp.pipe(TEXTS, component_cfg={TAGGER: {"exit_mode": "token", "threshold": 0.0}}))
    assert zero == off
    one = nlp.pipe(TEXTS, component_cfg={TAGGER: {"exit_mode": "token", "threshold": 1.0, "window": 1}})
    assert all(t._.exit_layer == 1 for doc in one for t in doc)
    scheduled = nlp("Alice lives in Paris .", component_cfg={
        TAGGER: {"exit_mode": "token", "threshold": 0.1, "threshold_multipliers": [1, 5, 20]}})
    assert all(1 <= t._.exit_layer <= 3 for t in scheduled)


def test_int8_batch_size_invariance(quantized):
    nlp = spacy.load(quantized)
    cfg = {TAGGER: {"exit_mode": "token", "threshold": 0.3, "window": 1}}
    one = results(nlp.pipe(TEXTS, batch_size=1, component_cfg=cfg))
    many = results(nlp.pipe(TEXTS, batch_size=64, component_cfg=cfg))
    reversed_order = results(nlp.pipe(TEXTS[::-1], batch_size=7, component_cfg=cfg))[::-1]
    assert one == many == reversed_order


def test_int8_cost_reported_apart(quantized, trained):
    doc = spacy.load(quantized)("Alice lives in Paris .", component_cfg={TAGGER: {"exit_mode": "token", "threshold": 0.3}})
    summary = doc._.early_exit
    assert 0 < summary["int8_flops"] < summary["flops"] <= summary["flops_full"]
    float_doc = spacy.load(trained)("Alice lives in Paris .")
    assert "int8_flops" not in float_doc._.early_exit


def test_training_an_int8_pipeline_is_refused(quantized):
    nlp = spacy.load(quantized)
    examples = [Example.from_dict(nlp.make_doc(text), {GOLD_KEYS["pos"]: tags}) for text, tags in POS_DATA]
    with pytest.raises(ValueError, match="quantize"):
        nlp.update(examples)
    blank = spacy.blank("en")
    blank.add_pipe(TAGGER, config={"task": "pos", "model": {**PLAIN_OFFRAMPS,
        "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": "unused", "precision": "int8",
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96}}})
    with pytest.raises(ValueError, match="cannot be initialized or trained"):
        blank.initialize(lambda: [Example.from_dict(blank.make_doc(t), {"pos": p}) for t, p in POS_DATA])


def test_quantizing_twice_is_refused(quantized):
    with pytest.raises(ValueError, match="runs in int8: quantize a pipeline loaded in float32"):
        quantize_pipeline(spacy.load(quantized))


def rewrite_weights(folder: Path, change) -> None:
    model_file = folder / TAGGER / "model"
    model_msg = srsly.msgpack_loads(model_file.read_bytes())
    shim_msg = srsly.msgpack_loads(model_msg["shims"][0][0])
    shim_msg["weights"] = save_safetensors(change(load_safetensors(shim_msg["weights"])))
    model_msg["shims"][0][0] = srsly.msgpack_dumps(shim_msg)
    model_file.write_bytes(srsly.msgpack_dumps(model_msg))


def load_error(folder: Path) -> str:
    with pytest.raises(ValueError) as error:
        spacy.load(folder)
    return str(error.value)


NAME = "transformer.encoder.layer.1.intermediate.dense.weight_int8"


def test_int8_weights_are_safetensors_with_scales(quantized):
    model_msg = srsly.msgpack_loads((quantized / TAGGER / "model").read_bytes())
    shim_msg = srsly.msgpack_loads(model_msg["shims"][0][0])
    weights = load_safetensors(shim_msg["weights"])
    assert shim_msg["precision"] == "int8"
    assert weights[NAME].dtype == torch.int8
    assert weights[NAME.replace("weight_int8", "weight_scale")].dtype == torch.float32
    assert not any(name.endswith("dense.weight") and ".layer." in name for name in weights)


def test_int8_weights_of_the_wrong_dtype_are_refused(quantized, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    rewrite_weights(folder, lambda w: {**w, NAME: w[NAME].float()})
    message = load_error(folder)
    assert NAME in message and "dtype torch.float32" in message


def test_int8_weights_of_the_wrong_shape_are_refused(quantized, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    scale = NAME.replace("weight_int8", "weight_scale")
    rewrite_weights(folder, lambda w: {**w, scale: w[scale][:-1].contiguous()})
    message = load_error(folder)
    assert scale in message and "shape" in message


def test_missing_int8_scales_are_refused(quantized, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    scale = NAME.replace("weight_int8", "weight_scale")
    rewrite_weights(folder, lambda w: {k: v for k, v in w.items() if k != scale})
    assert scale in load_error(folder)


def test_corrupt_int8_file_is_refused(quantized, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    model_file = folder / TAGGER / "model"
    data = bytearray(model_file.read_bytes())
    model_file.write_bytes(bytes(data[: len(data) // 2]))
    message = load_error(folder)
    assert str(model_file) in message and "truncated" in message


def test_precision_in_config_and_weights_must_agree(trained, quantized, tmp_path):
    """int8 weights under a float32 config, and float32 weights under an int8 config."""
    float_config = (trained / "config.cfg").read_text()
    int8_config = (quantized / "config.cfg").read_text()
    int8_under_float = tmp_path / "a"
    shutil.copytree(quantized, int8_under_float)
    (int8_under_float / "config.cfg").write_text(float_config)
    assert "saved weights are int8 but the config asks for precision 'float32'" in load_error(int8_under_float)
    float_under_int8 = tmp_path / "b"
    shutil.copytree(trained, float_under_int8)
    (float_under_int8 / "config.cfg").write_text(int8_config)
    assert 'asks for precision "int8" but the saved weights are float32' in load_error(float_under_int8)
