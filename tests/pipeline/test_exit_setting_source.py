"""The exit setting has one home, the pipeline config: what configure_exit sets
is what nlp.config and a saved config.cfg show; config overrides at
spacy.load and edits of config.cfg take effect; per-call settings change
nothing saved; pipelines saved by earlier versions (the setting in the
component's cfg file) load with the setting they ran with."""
import json
import shutil
import warnings

import pytest
import spacy
from spacy.util import load_config

from helpers.tiny_bert import NER_DATA, PLAIN_OFFRAMPS, train_tiny_pipeline

PIPE = "earlyexit_tagger"
TEXTS = [text for text, _ in NER_DATA]
TOKEN_EXIT = {"exit_mode": "token", "threshold": 0.7, "window": 0}


def running(nlp) -> dict:
    """The setting the component runs with, as a plain dict."""
    return nlp.get_pipe(PIPE).exit_settings.to_dict()


def configured(nlp) -> dict:
    """The exit settings that nlp.config shows for the component."""
    block = nlp.config["components"][PIPE]
    return {key: block[key] for key in running(nlp)}


def exit_layers(nlp) -> list:
    return [doc._.exit_layers for doc in nlp.pipe(TEXTS)]


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    """A trained NER pipeline with token exit configured, saved; returns
    (folder, the exit layers it gave, the settings)."""
    nlp = train_tiny_pipeline(tiny_bert, "ner", 60)
    settings = nlp.get_pipe(PIPE).configure_exit(**TOKEN_EXIT).to_dict()
    layers = {layer for doc in exit_layers(nlp) for layer in doc}
    assert len(layers) > 1, f"precondition: a mix of exit layers, got {layers}"
    folder = tmp_path_factory.mktemp("source") / "pipeline"
    nlp.to_disk(folder)
    return folder, exit_layers(nlp), settings


def test_configure_exit_shows_in_nlp_config(tiny_bert):
    nlp = spacy.blank("en")
    tagger = nlp.add_pipe(PIPE, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert)}})
    assert configured(nlp) == running(nlp)
    tagger.configure_exit(exit_mode="sentence", threshold=0.25, threshold_multipliers=[1, 1, 2])
    assert running(nlp)["threshold"] == 0.25
    assert configured(nlp) == running(nlp)
    assert nlp.config["components"][PIPE]["threshold_multipliers"] == [1, 1, 2]


def test_saved_config_holds_the_setting_and_cfg_does_not(saved):
    folder, _, settings = saved
    block = load_config(folder / "config.cfg")["components"][PIPE]
    assert {key: block[key] for key in settings} == settings
    cfg = json.loads((folder / PIPE / "cfg").read_text())
    assert "exit" not in cfg and cfg["labels"]


def test_load_runs_the_saved_setting(saved):
    folder, expected, settings = saved
    nlp = spacy.load(folder)
    assert running(nlp) == settings == configured(nlp)
    assert exit_layers(nlp) == expected


def test_config_override_at_load_takes_effect(saved):
    folder, expected, _ = saved
    nlp = spacy.load(folder, config={"components": {PIPE: {"exit_mode": "off"}}})
    assert running(nlp)["exit_mode"] == "off" == configured(nlp)["exit_mode"]
    n_layers = nlp.get_pipe(PIPE).n_layers
    assert all(set(layers) == {n_layers} for layers in exit_layers(nlp) if layers)
    assert exit_layers(nlp) != expected  # the saved setting gave a mix of layers
    everything = spacy.load(folder, config={"components": {PIPE: {"threshold": 1.0}}})
    assert running(everything)["threshold"] == 1.0 and running(everything)["exit_mode"] == "token"
    assert all(set(layers) == {1} for layers in exit_layers(everything) if layers)


def test_edited_config_file_takes_effect(saved, tmp_path):
    folder, _, _ = saved
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config_file = copy / "config.cfg"
    text = config_file.read_text()
    assert "threshold = 0.7" in text
    config_file.write_text(text.replace("threshold = 0.7", "threshold = 1.0", 1))
    nlp = spacy.load(copy)
    assert running(nlp)["threshold"] == 1.0
    assert all(set(layers) == {1} for layers in exit_layers(nlp) if layers)


def test_per_call_settings_change_nothing_saved(saved, tmp_path):
    folder, expected, settings = saved
    nlp = spacy.load(folder)
    docs = list(nlp.pipe(TEXTS, component_cfg={PIPE: {"exit_mode": "off"}}))
    assert docs and running(nlp) == settings == configured(nlp)
    nlp.to_disk(tmp_path / "again")
    assert running(spacy.load(tmp_path / "again")) == settings


def test_pipeline_saved_by_an_earlier_version_keeps_its_setting(saved, tmp_path):
    """Earlier versions kept the setting in cfg and wrote the factory's
    defaults to config.cfg: such a pipeline loads with the cfg setting, says
    so once, and saving it again moves the setting into config.cfg."""
    folder, expected, settings = saved
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    cfg_file = old / PIPE / "cfg"
    cfg = json.loads(cfg_file.read_text())
    cfg["exit"] = settings
    cfg_file.write_text(json.dumps(cfg))
    config_file = old / "config.cfg"
    config_file.write_text(
        config_file.read_text().replace('exit_mode = "token"', 'exit_mode = "off"').replace("threshold = 0.7", "threshold = 0.1")
    )
    with pytest.warns(UserWarning, match="earlier spacy-earlyexit"):
        nlp = spacy.load(old)
    assert running(nlp) == settings == configured(nlp)
    assert exit_layers(nlp) == expected
    nlp.to_disk(tmp_path / "resaved")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        resaved = spacy.load(tmp_path / "resaved")
    assert running(resaved) == settings
    assert "exit" not in json.loads((tmp_path / "resaved" / PIPE / "cfg").read_text())


def test_settings_the_task_cannot_use_are_refused_when_set(tiny_bert):
    pos = {"task": "pos", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert)}}
    with pytest.raises(ValueError, match="entity_exit"):
        spacy.blank("en").add_pipe(PIPE, config={**pos, "entity_exit": True})
    nlp = spacy.blank("en")
    tagger = nlp.add_pipe(PIPE, config=pos)
    before = configured(nlp)
    with pytest.raises(ValueError, match="entity_exit"):
        tagger.configure_exit(exit_mode="token", entity_exit=True)
    with pytest.raises(ValueError, match="threshold"):
        tagger.configure_exit(threshold=2.0)
    assert configured(nlp) == before == running(nlp)


def test_depth_is_checked_once_the_model_exists(tiny_bert):
    nlp = train_tiny_pipeline(tiny_bert, "pos", 0)
    tagger = nlp.get_pipe(PIPE)
    before = configured(nlp)
    with pytest.raises(ValueError, match="max_layer"):
        tagger.configure_exit(max_layer=tagger.n_layers + 1)
    with pytest.raises(ValueError, match="multiplier"):
        tagger.configure_exit(threshold_multipliers=[1.0])
    assert configured(nlp) == before


def test_renamed_component_keeps_its_config_in_step(tiny_bert):
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": "pos", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert)}})
    nlp.rename_pipe(PIPE, "tagger2")
    nlp.get_pipe("tagger2").configure_exit(exit_mode="token", threshold=0.3)
    assert nlp.config["components"]["tagger2"]["threshold"] == 0.3


def test_standalone_component_has_no_config_to_write(tiny_bert):
    """A component made outside a pipeline keeps its setting without warnings."""
    from spacy.util import registry

    from spacy_earlyexit import EarlyExitTagger

    nlp = spacy.blank("en")
    model = registry.resolve({"m": {"@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(tiny_bert)}})["m"]
    tagger = EarlyExitTagger(nlp.vocab, model, task="pos")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tagger.configure_exit(exit_mode="token").exit_mode == "token"
