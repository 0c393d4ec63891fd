"""bfloat16 inference of a float32-trained pipeline, chosen at load time
(`model.precision` = "bfloat16" or "auto"): the transformer runs in
bfloat16, the off-ramps read float32 states, labels and exits follow
float32's, and the setting round-trips through to_disk."""
import warnings

import pytest
import spacy
import torch
from spacy.training import Example

import spacy_earlyexit

from spacy_earlyexit.layers import shim as shim_module
from spacy_earlyexit.model import precision as precision_module
from spacy_earlyexit.model.precision import CpuFeatures

from helpers.tiny_bert import NER_DATA, train_tiny_pipeline

PIPE = "earlyexit_tagger"
TEXTS = [text for text, _ in NER_DATA] * 3
TOKEN_EXIT = {"exit_mode": "token", "threshold": 0.7, "window": 0}


def with_precision(value: str) -> dict:
    return {"components": {PIPE: {"model": {"precision": value}}}}


def outputs(nlp, **setting):
    docs = list(nlp.pipe(TEXTS, component_cfg={PIPE: setting} if setting else None))
    return [[(t.ent_iob_, t.ent_type_) for t in doc] for doc in docs], [doc._.exit_layers for doc in docs]


def mixed_exit_setting(nlp) -> dict:
    """A token-mode setting under which float32 exits at several layers."""
    for threshold in (0.7, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005):
        setting = {**TOKEN_EXIT, "threshold": threshold}
        if len({layer for doc in outputs(nlp, **setting)[1] for layer in doc}) > 1:
            return setting
    raise AssertionError("precondition: no threshold gives a mix of exit layers")


def agreement(a, b) -> float:
    pairs = [(x, y) for doc_a, doc_b in zip(a, b) for x, y in zip(doc_a, doc_b)]
    return sum(x == y for x, y in pairs) / len(pairs)


@pytest.fixture(autouse=True)
def cpu_with_amx(monkeypatch):
    """Tests run as on a CPU with AMX (no slow-path warning) unless they say otherwise."""
    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(amx=True, avx512_bf16=True, vnni=True))


@pytest.fixture(scope="module", params=["plain", "context"])
def saved(request, tiny_bert, tmp_path_factory):
    """A float32 NER pipeline (plain off-ramps, or the default context
    off-ramps with case features), saved."""
    model = {} if request.param == "plain" else {"model": {"case_features": True, "offramp_context_layers": "all",
                                                           "offramp_hidden": 16}}
    nlp = train_tiny_pipeline(tiny_bert, "ner", 80, **model)
    folder = tmp_path_factory.mktemp("bf16") / request.param
    nlp.to_disk(folder)
    return folder


def test_loads_in_bfloat16_from_a_config_override(saved):
    nlp = spacy.load(saved, config=with_precision("bfloat16"))
    tagger = nlp.get_pipe(PIPE)
    shim = tagger.model.shims[0]
    assert shim.runtime_precision == "bfloat16" == tagger.precision
    assert {p.dtype for p in shim.encoder.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in shim.encoder.offramps.parameters()} == {torch.float32}
    assert nlp.config["components"][PIPE]["model"]["precision"] == "bfloat16"


def test_offramps_read_float32_states(saved):
    nlp = spacy.load(saved, config=with_precision("bfloat16"))
    seen = set()
    hooks = [ramp.register_forward_pre_hook(lambda module, args: seen.add(args[0].dtype))
             for ramp in nlp.get_pipe(PIPE).model.shims[0].encoder.offramps]
    try:
        list(nlp.pipe(TEXTS[:3]))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {torch.float32}


def test_labels_and_exits_follow_float32(saved):
    reference = spacy.load(saved)
    fast = spacy.load(saved, config=with_precision("bfloat16"))
    labels32, _ = outputs(reference)
    labels16, _ = outputs(fast)
    assert agreement(labels32, labels16) >= 0.95
    setting = mixed_exit_setting(reference)
    labels32, exits32 = outputs(reference, **setting)
    labels16, exits16 = outputs(fast, **setting)
    assert agreement(exits32, exits16) >= 0.9
    assert agreement(labels32, labels16) >= 0.9


def test_saved_bfloat16_pipeline_round_trips(saved, tmp_path):
    fast = spacy.load(saved, config=with_precision("bfloat16"))
    before = outputs(fast, **TOKEN_EXIT)
    fast.to_disk(tmp_path / "bf16")
    again = spacy.load(tmp_path / "bf16")
    assert again.get_pipe(PIPE).precision == "bfloat16"
    assert outputs(again, **TOKEN_EXIT) == before
    # the same weights run in float32 when the config asks for it
    as_float = spacy.load(tmp_path / "bf16", config=with_precision("float32"))
    assert as_float.get_pipe(PIPE).precision == "float32"
    assert agreement(outputs(as_float)[0], outputs(again)[0]) >= 0.95


def measured(monkeypatch, speedup: float) -> list:
    """bfloat16 products measure `speedup` x float32's; returns the shapes asked for."""
    asked = []

    def fake(in_features, out_features, **_):
        asked.append((in_features, out_features))
        return speedup

    monkeypatch.setattr(shim_module, "bfloat16_speedup", fake)
    return asked


def test_auto_follows_the_processor(saved, monkeypatch):
    asked = measured(monkeypatch, 0.5)
    assert spacy.load(saved, config=with_precision("auto")).get_pipe(PIPE).precision == "bfloat16"
    assert asked == []  # AMX: no need to time anything
    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(avx512_bf16=True, vnni=True))
    nlp = spacy.load(saved, config=with_precision("auto"))
    assert nlp.get_pipe(PIPE).precision == "float32"
    encoder = nlp.get_pipe(PIPE).model.shims[0].encoder
    assert asked == [(encoder.shape.hidden_size, encoder.shape.intermediate_size)]  # the encoder's FFN product
    measured(monkeypatch, 3.0)  # avx512_bf16 without AMX, measured fast: bfloat16
    assert spacy.load(saved, config=with_precision("auto")).get_pipe(PIPE).precision == "bfloat16"
    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(vnni=True))
    assert spacy.load(saved, config=with_precision("auto")).get_pipe(PIPE).precision == "float32"  # emulated


def test_bfloat16_without_amx_warns_where_it_measures_slow(saved, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(avx512_bf16=True))
    measured(monkeypatch, 0.6)
    with pytest.warns(UserWarning, match="slower than float32 on this CPU"):
        spacy.load(saved, config=with_precision("bfloat16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert spacy.load(saved, config=with_precision("auto")).get_pipe(PIPE).precision == "float32"
        measured(monkeypatch, 2.0)
        assert spacy.load(saved, config=with_precision("bfloat16")).get_pipe(PIPE).precision == "bfloat16"
    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures())
    with pytest.warns(UserWarning, match="slower than float32 on this CPU"):
        spacy.load(saved, config=with_precision("bfloat16"))


def test_training_in_bfloat16_is_refused(saved):
    nlp = spacy.load(saved, config=with_precision("bfloat16"))
    text, entities = NER_DATA[0]
    example = Example.from_dict(nlp.make_doc(text), {"entities": entities})
    with pytest.raises(ValueError, match="bfloat16: training it is not supported"):
        nlp.update([example])


def test_auto_trains_in_float32(tiny_bert):
    nlp = train_tiny_pipeline(tiny_bert, "ner", 2, model={"precision": "auto"})
    assert nlp.get_pipe(PIPE).precision == "float32"
    assert shim_module.saved_precision(nlp.get_pipe(PIPE).model.shims[0].encoder) == "float32"


def test_load_sets_every_earlyexit_component_whatever_its_name(saved, tmp_path):
    nlp = spacy.load(saved)
    nlp.rename_pipe(PIPE, "tagger_b")
    nlp.to_disk(tmp_path / "renamed")
    fast = spacy_earlyexit.load(tmp_path / "renamed", precision="bfloat16", config={"nlp": {"batch_size": 7}})
    assert fast.get_pipe("tagger_b").precision == "bfloat16"
    assert fast.batch_size == 7  # the caller's config is kept
    assert spacy_earlyexit.load(tmp_path / "renamed").get_pipe("tagger_b").precision == "float32"  # as saved
    assert outputs(spacy_earlyexit.load(saved, precision="bfloat16")) == outputs(
        spacy.load(saved, config=with_precision("bfloat16")))


def test_load_refuses_what_it_cannot_set(saved, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        spacy_earlyexit.load(saved, precision="float16")
    spacy.blank("en").to_disk(tmp_path / "blank")
    with pytest.raises(ValueError, match="has no earlyexit_tagger component"):
        spacy_earlyexit.load(tmp_path / "blank", precision="auto")
    assert spacy_earlyexit.load(tmp_path / "blank").pipe_names == []
