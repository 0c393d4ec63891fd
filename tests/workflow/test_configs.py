"""Every shipped config in configs/ is complete: `spacy debug config` passes on
it with its paths filled (a tiny corpus, a tiny BERT as the backbone, tiny
saved pipelines for the configs that source an earlier stage), and it names
only the current version of each of the package's registered functions."""
import re
from pathlib import Path

import pytest
import spacy
from spacy.cli.debug_config import debug_config
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import load_config

from helpers.tiny_bert import NER_DATA, PLAIN_OFFRAMPS, train_on, train_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))
#: the sourced stage's task, by the config file's name
TASK_OF_PREFIX = {"ner_": "ner", "pos_": "pos", "zh_ner_": "ner", "zh_segment_": "segment"}
ZH_SEGMENT_DATA = [("我爱北京", ["我", "爱", "北京"]), ("他在上海工作", ["他", "在", "上海", "工作"])]


def task_of(config: Path) -> str:
    prefix = max((p for p in TASK_OF_PREFIX if config.name.startswith(p)), key=len, default=None)
    assert prefix is not None, f"{config.name}: add its prefix to TASK_OF_PREFIX"
    return TASK_OF_PREFIX[prefix]


def zh_segment_pipeline(bert: Path):
    nlp = spacy.blank("zh")
    nlp.add_pipe("earlyexit_tagger", config={"task": "segment", "model": {**PLAIN_OFFRAMPS, "name": str(bert)}})
    examples = []
    for text, words in ZH_SEGMENT_DATA:
        reference = spacy.tokens.Doc(nlp.vocab, words=words, spaces=[False] * len(words))
        examples.append(Example(nlp.make_doc(text), reference))
    return train_on(nlp, examples, 0)


@pytest.fixture(scope="module")
def filled_paths(tiny_bert, tmp_path_factory):
    """Per (language, task): the values of every path a config may name."""
    root = tmp_path_factory.mktemp("configs")
    pipelines = {
        ("en", "ner"): train_tiny_pipeline(tiny_bert, "ner", 0),
        ("en", "pos"): train_tiny_pipeline(tiny_bert, "pos", 0),
        ("zh", "segment"): zh_segment_pipeline(tiny_bert),
    }
    zh_ner = spacy.blank("zh")
    zh_ner.add_pipe("earlyexit_tagger", config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert)}})
    pipelines[("zh", "ner")] = train_on(
        zh_ner, [Example.from_dict(zh_ner.make_doc("我在北京"), {"entities": [(2, 4, "LOC")]})], 0
    )
    paths = {}
    for (lang, task), nlp in pipelines.items():
        folder = root / f"{lang}_{task}"
        folder.mkdir()
        nlp.to_disk(folder / "pipeline")
        texts = [text for text, _ in (NER_DATA if lang == "en" else ZH_SEGMENT_DATA)]
        DocBin(docs=[nlp.make_doc(text) for text in texts]).to_disk(folder / "corpus.spacy")
        pipeline = str(folder / "pipeline")
        corpus = str(folder / "corpus.spacy")
        paths[(lang, task)] = {
            "train": corpus, "dev": corpus, "backbone": str(tiny_bert),
            "stage1": pipeline, "final_stage": pipeline,
        }
    return paths


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_passes_spacy_debug_config(config: Path, filled_paths, capsys):
    lang = load_config(config, interpolate=False)["nlp"]["lang"]
    values = filled_paths[(lang, task_of(config))]
    declared = load_config(config, interpolate=False)["paths"]
    overrides = {f"paths.{name}": values[name] for name in declared if name in values}
    debug_config(config, overrides=overrides)  # raises (or exits) on an incomplete or invalid config
    assert "Config is valid" in capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_names_current_registrations(config: Path):
    from spacy.util import registry

    import spacy_earlyexit  # noqa: F401

    text = config.read_text()
    for table, name in re.findall(r'@(\w+) = "(spacy_earlyexit\.[\w.]+)"', text):
        assert registry.has(table, name), f"{config.name} names {name!r}, which is not registered"
