"""spaCy finds the component, architecture and scorer through entry points,
in a fresh interpreter that never imports spacy_earlyexit itself."""
import configparser
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distribution
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def run_fresh(script: str, timeout: float = 120) -> dict:
    """Run `script` in a new interpreter (outside the repository, so that only
    the installed package can be found); it prints one JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env,
        cwd="/", timeout=timeout,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_add_pipe_without_importing_the_package(tiny_bert):
    script = f"""
import json, sys
import spacy
from spacy.training import Example
before = "spacy_earlyexit" in sys.modules
nlp = spacy.blank("en")
tagger = nlp.add_pipe("earlyexit_tagger", config={{"task": "pos", "model": {{"name": {str(tiny_bert)!r}}}}})
example = Example.from_dict(nlp.make_doc("Alice lives in Paris ."), {{"pos": ["PROPN", "VERB", "ADP", "PROPN", "PUNCT"]}})
nlp.initialize(lambda: [example])
doc = nlp("Alice lives in Paris .")
print(json.dumps({{
    "imported_before": before,
    "class": type(tagger).__module__ + "." + type(tagger).__name__,
    "labels": list(tagger.labels),
    "pos": [t.pos_ for t in doc],
    "exit_layers": doc._.exit_layers,
}}))
"""
    out = run_fresh(script)
    assert out["imported_before"] is False
    assert out["class"] == "spacy_earlyexit.pipeline.component.EarlyExitTagger"
    assert out["labels"] == ["ADP", "PROPN", "PUNCT", "VERB"]
    assert len(out["pos"]) == 5 and set(out["pos"]) <= {"ADP", "PROPN", "PUNCT", "VERB", "SPACE"}
    assert out["exit_layers"] == [3] * 5


def test_registry_lookups_without_importing_the_package():
    script = """
import json, sys
from spacy.util import registry
before = "spacy_earlyexit" in sys.modules
found = {
    "architecture": registry.architectures.get("spacy_earlyexit.EarlyExitTransformer.v1"),
    "scorer": registry.scorers.get("spacy_earlyexit.scorer.v1"),
    "misc": registry.misc.get("spacy_earlyexit.SelfSampling.v1"),
    "factory": registry.factories.get("earlyexit_tagger"),
}
scorer = found["scorer"]()
print(json.dumps({
    "imported_before": before,
    "found": {k: f.__module__ + ":" + f.__name__ for k, f in found.items()},
    "scorer": scorer.__module__ + ":" + scorer.__name__,
}))
"""
    out = run_fresh(script)
    assert out["imported_before"] is False
    assert out["found"] == {
        "architecture": "spacy_earlyexit.pipeline.architectures:EarlyExitTransformer_v1",
        "scorer": "spacy_earlyexit.pipeline.scorers:make_early_exit_scorer",
        "misc": "spacy_earlyexit.pipeline.architectures:make_self_sampling_v1",
        "factory": "spacy_earlyexit.pipeline.factory:make_earlyexit_tagger",
    }
    assert out["scorer"] == "spacy_earlyexit.pipeline.scorers:score_early_exit"


def test_installed_entry_points_match_setup_cfg():
    """The installed (editable) metadata is not stale: every entry point
    declared in setup.cfg is installed, and no other."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    declared = set()
    for group, block in parser["options.entry_points"].items():
        for line in filter(None, (line.strip() for line in block.splitlines())):
            name, _, value = (part.strip() for part in line.partition("="))
            declared.add((group, name, value))
    installed = {(ep.group, ep.name, ep.value) for ep in distribution("spacy-earlyexit").entry_points}
    assert declared == installed, (
        "the installed entry points differ from setup.cfg: reinstall the package "
        "(pip install --no-deps -e .) so that spaCy finds the new registrations"
    )
    assert {group for group, _, _ in declared} >= {"spacy_factories", "spacy_architectures", "spacy_scorers"}


def package_registrations() -> list:
    """(registry, name) of everything the package registers with spaCy and
    thinc: names starting with "spacy_earlyexit." and the factory."""
    import spacy_earlyexit  # noqa: F401
    from spacy.util import registry

    found = [("factories", "earlyexit_tagger")]
    for registry_name in registry.get_registry_names():
        if registry_name in ("factories", "cli"):
            continue
        table = getattr(registry, registry_name)
        found += [(registry_name, name) for name in table.get_all() if name.startswith("spacy_earlyexit.")]
    return sorted(set(found))


def test_registered_names_have_one_version_each():
    bases = [name.rpartition(".v")[0] for _, name in package_registrations() if ".v" in name]
    assert len(bases) == len(set(bases)), sorted(bases)


def test_spacy_find_function_finds_every_registration_in_a_fresh_interpreter():
    """`spacy find-function` (a fresh interpreter each, outside the repository,
    so only entry points can lead spaCy to the package) finds everything the
    package registers."""
    # the factory is found through its entry point by add_pipe (tested above);
    # find-function looks factories up in spaCy's own table only
    registrations = [(table, name) for table, name in package_registrations() if table != "factories"]
    assert {name for _, name in registrations} >= {
        "spacy_earlyexit.EarlyExitTransformer.v1", "spacy_earlyexit.SelfSampling.v1",
        "spacy_earlyexit.enable_self_sampling.v1", "spacy_earlyexit.scorer.v1",
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)

    def find(registration):
        registry_name, name = registration
        run = subprocess.run(
            [sys.executable, "-m", "spacy", "find-function", name, "--registry", registry_name],
            capture_output=True, text=True, env=env, cwd="/", timeout=120,
        )
        return registration, run.returncode, run.stdout + run.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(find, registrations))
    missing = [(registration, output[-300:]) for registration, code, output in outcomes if code != 0]
    assert not missing, missing
    for (_, name), _, output in outcomes:
        assert "spacy_earlyexit" in output, (name, output)
