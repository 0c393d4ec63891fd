"""The depth cap (max_layer) in the component: per-call and saved settings,
the factory's config, doc._.early_exit and token._.exit_layer, scores
(per-layer scores stay at full depth), batch independence, and training
(which ignores the cap).

The pipeline is a tiny 4-layer BERT trained briefly for POS: its layer 2
off-ramp happens to score better than the last, the case max_layer is for.
"""
import json
from collections import Counter
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import load_model_from_config

from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, POS_DATA, corpus_words, train_tiny_pipeline, write_tiny_bert

PIPE = "earlyexit_tagger"
N_LAYERS = 4
TEXTS = [text for text, _ in POS_DATA + NER_DATA] + ["hello world", "", "Alice  met \n Bob ."]
# exits at layers 1-4 on TEXTS (checked in test_token_mode_with_a_cap)
TOKEN = {"exit_mode": "token", "threshold": 0.5, "window": 1}


@pytest.fixture(scope="module")
def bert4(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert4"), corpus_words(), n_layers=N_LAYERS)


@pytest.fixture(scope="module")
def nlp(bert4):
    """POS, 20 steps, off-ramps sharpened x4 (weights and biases: the same
    labels, more spread-out uncertainties)."""
    nlp = train_tiny_pipeline(bert4, "pos", 20)
    with torch.no_grad():
        for ramp in nlp.get_pipe(PIPE).model.shims[0].encoder.offramps:
            ramp.linear.weight.mul_(4.0)
            ramp.linear.bias.mul_(4.0)
    return nlp


def examples(nlp) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"pos": tags}) for text, tags in POS_DATA]


def results(docs) -> List[Tuple]:
    return [([t.pos_ for t in doc], doc._.exit_layers, doc._.early_exit) for doc in docs]


def cfg(**settings) -> dict:
    """A fresh component_cfg (nlp.pipe writes batch_size into it)."""
    return {PIPE: dict(settings)}


def test_the_cut_network_scores_as_its_off_ramp(nlp) -> None:
    """Mode off + max_layer 2: the score of off-ramp 2 at full depth, every
    token at layer 2, half the FLOPs; per-layer scores stay at full depth."""
    full = nlp.evaluate(examples(nlp))
    cut = nlp.evaluate(examples(nlp), component_cfg=cfg(exit_mode="off", max_layer=2))
    assert full["pos_acc_layer_2"] > full["pos_acc"]  # the case for a cap
    assert cut["pos_acc"] == full["pos_acc_layer_2"]
    assert cut["exit_layer_mean"] == 2.0
    assert cut["flops_speedup"] == pytest.approx(2.0)
    for layer in range(1, N_LAYERS + 1):
        key = f"pos_acc_layer_{layer}"
        assert cut[key] == full[key]
    doc = nlp(POS_DATA[0][0], component_cfg=cfg(exit_mode="off", max_layer=2))
    assert doc._.exit_layers == [2] * len(doc) == [t._.exit_layer for t in doc]
    assert doc._.early_exit["exit_layer_mean"] == 2.0
    assert doc._.early_exit["flops_speedup"] == pytest.approx(2.0)


def test_token_mode_with_a_cap(nlp) -> None:
    free = results(nlp.pipe(TEXTS, component_cfg=cfg(**TOKEN)))
    capped = results(nlp.pipe(TEXTS, component_cfg=cfg(**TOKEN, max_layer=3)))
    layers = Counter(layer for _, doc_layers, _ in free for layer in doc_layers)
    assert {1, 2, 3, 4} <= set(layers)  # the setting exits on both sides of the cap
    for (free_pos, free_layers, _), (pos, cap_layers, summary) in zip(free, capped):
        for a_pos, a_layer, b_pos, b_layer in zip(free_pos, free_layers, pos, cap_layers):
            if a_layer < 3:
                assert (b_pos, b_layer) == (a_pos, a_layer)
            else:
                assert b_layer == 3
        if cap_layers:
            assert summary["exit_layer_mean"] == pytest.approx(sum(cap_layers) / len(cap_layers))
    # max_layer = the depth changes nothing
    assert results(nlp.pipe(TEXTS, component_cfg=cfg(**TOKEN, max_layer=N_LAYERS))) == free


def test_results_do_not_depend_on_the_batch(nlp) -> None:
    texts = TEXTS * 3
    one = results(nlp.pipe(texts, batch_size=1, component_cfg=cfg(**TOKEN, max_layer=3)))
    many = results(nlp.pipe(texts, batch_size=64, component_cfg=cfg(**TOKEN, max_layer=3)))
    assert one == many
    alone = results([nlp(TEXTS[3], component_cfg=cfg(**TOKEN, max_layer=3))])[0]
    assert one[3] == alone
    assert max(layer for _, doc_layers, _ in one for layer in doc_layers) == 3


def test_per_call_cap_does_not_persist(nlp) -> None:
    tagger = nlp.get_pipe(PIPE)
    saved = tagger.exit_settings
    assert saved.max_layer is None
    doc = nlp(TEXTS[0], component_cfg=cfg(max_layer=1))
    assert doc._.exit_layers == [1] * len(doc)
    assert tagger.exit_settings == saved
    assert nlp(TEXTS[0])._.exit_layers == [N_LAYERS] * len(doc)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, N_LAYERS + 1])
def test_bad_caps_raise_naming_max_layer(nlp, bad) -> None:
    tagger = nlp.get_pipe(PIPE)
    saved = tagger.exit_settings
    with pytest.raises(ValueError, match="max_layer"):
        tagger.configure_exit(max_layer=bad)
    with pytest.raises(ValueError, match="max_layer"):
        nlp(TEXTS[0], component_cfg=cfg(max_layer=bad))
    with pytest.raises(ValueError, match="max_layer"):
        list(nlp.pipe(TEXTS[:2], component_cfg=cfg(max_layer=bad)))
    assert tagger.exit_settings == saved
    if bad == N_LAYERS + 1:
        with pytest.raises(ValueError, match=f"max_layer is {bad} but the encoder has {N_LAYERS} layers"):
            tagger.configure_exit(max_layer=bad)


def test_saved_cap_round_trips(nlp, tmp_path) -> None:
    tagger = nlp.get_pipe(PIPE)
    settings = tagger.configure_exit(**TOKEN, max_layer=3)
    try:
        assert settings.max_layer == 3 and nlp.config["components"][PIPE]["max_layer"] == 3
        expected = results(nlp.pipe(TEXTS))
        assert max(layer for _, doc_layers, _ in expected for layer in doc_layers) == 3
        restored = load_model_from_config(nlp.config, auto_fill=True)
        restored.from_bytes(nlp.to_bytes())
        assert restored.get_pipe(PIPE).exit_settings == settings
        assert results(restored.pipe(TEXTS)) == expected
        nlp.to_disk(tmp_path / "pipeline")
    finally:
        tagger.configure_exit(exit_mode="off", max_layer=None)
    saved_config = spacy.util.load_config(tmp_path / "pipeline" / "config.cfg")
    assert saved_config["components"][PIPE]["max_layer"] == 3
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe(PIPE).exit_settings == settings
    assert results(loaded.pipe(TEXTS)) == expected
    # a per-call setting lifts the saved cap
    lifted = loaded(TEXTS[0], component_cfg=cfg(exit_mode="off", max_layer=None))
    assert lifted._.exit_layers == [N_LAYERS] * len(lifted)


def test_pipelines_saved_without_the_setting_load(nlp, tmp_path) -> None:
    """A pipeline saved before max_layer existed: no key in the component's
    cfg (which then kept the exit setting), no line in config.cfg. It loads
    with no cap."""
    folder = tmp_path / "old"
    nlp.to_disk(folder)
    cfg_file = folder / PIPE / "cfg"
    data = json.loads(cfg_file.read_text())
    data["exit"] = {key: value for key, value in nlp.get_pipe(PIPE).exit_settings.to_dict().items() if key != "max_layer"}
    cfg_file.write_text(json.dumps(data))
    config_file = folder / "config.cfg"
    lines = config_file.read_text().splitlines()
    assert any(line.startswith("max_layer = ") for line in lines)
    config_file.write_text("\n".join(line for line in lines if not line.startswith("max_layer = ")) + "\n")
    loaded = spacy.load(folder)
    assert loaded.get_pipe(PIPE).exit_settings.max_layer is None
    assert results(loaded.pipe(TEXTS)) == results(nlp.pipe(TEXTS))


def test_factory_config_sets_the_cap(bert4) -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": "pos", "model": {**PLAIN_OFFRAMPS, "name": str(bert4)}, "max_layer": 2})
    assert nlp.get_pipe(PIPE).exit_settings.max_layer == 2
    assert nlp.config["components"][PIPE]["max_layer"] == 2
    with pytest.raises(ValueError, match="max_layer"):
        spacy.blank("en").add_pipe(PIPE, config={"task": "pos", "model": {**PLAIN_OFFRAMPS, "name": str(bert4)}, "max_layer": 0})


def test_training_ignores_the_cap(bert4, monkeypatch) -> None:
    """With max_layer 1 saved, an update still runs every layer for every
    token and trains every off-ramp."""
    nlp = train_tiny_pipeline(bert4, "pos", 0, max_layer=1)
    tagger = nlp.get_pipe(PIPE)
    assert tagger.exit_settings.max_layer == 1
    seen = []
    get_loss = tagger.get_loss

    def spy(examples, outputs):
        seen.append((outputs.layer_active.copy(), outputs.exit_layers))
        return get_loss(examples, outputs)

    monkeypatch.setattr(tagger, "get_loss", spy)
    encoder = tagger.model.shims[0].encoder
    before = [ramp.linear.weight.detach().clone() for ramp in encoder.offramps]
    optimizer = nlp.resume_training()
    optimizer.learn_rate = 1e-3
    nlp.update(examples(nlp), sgd=optimizer)
    (layer_active, exit_layers), = seen
    assert layer_active.shape[0] == N_LAYERS and layer_active.all()
    assert all(set(layers.tolist()) == {N_LAYERS} for layers in exit_layers)
    after = [ramp.linear.weight.detach() for ramp in encoder.offramps]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert nlp(TEXTS[0])._.exit_layers == [1] * len(nlp.make_doc(TEXTS[0]))
