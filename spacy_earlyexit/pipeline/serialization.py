"""Loading a saved earlyexit_tagger: its settings (cfg.json, parsed by the
standard library) and its model (safetensors weights, transformer config,
tokenizer), with checks that the saved data fits the pipeline loading it.
Every error names the file or data, and what is wrong with it."""
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Sequence

from spacy import util

from ..layers.shim import ModelDataError

if TYPE_CHECKING:
    from .component import EarlyExitTagger


def load_from_disk(tagger: "EarlyExitTagger", path: Path, exclude: Iterable[str]) -> "EarlyExitTagger":
    """EarlyExitTagger.from_disk."""

    def load_cfg(file: Path) -> None:
        if not file.exists():
            raise ValueError(f"{tagger.name}: the saved pipeline lacks {file} (labels and settings)")
        try:
            # the standard library parses floats exactly (srsly's reader
            # can be 1 ulp off, e.g. a threshold of 0.7 came back as 0.7000000000000001)
            cfg = json.loads(file.read_text(encoding="utf8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{tagger.name}: {file} is not valid JSON ({error})") from error
        load_cfg_dict(tagger, cfg, file)

    def load_model(file: Path) -> None:
        if not file.exists():
            raise ValueError(
                f"{tagger.name}: the saved pipeline lacks its model file {file} (weights, "
                "transformer config, tokenizer); save the pipeline again with nlp.to_disk"
            )
        load_model_bytes(tagger, file.read_bytes(), str(file))

    readers = {
        "cfg": load_cfg,
        "vocab": lambda file: tagger.vocab.from_disk(file, exclude=exclude),
        "model": load_model,
    }
    util.from_disk(path, readers, exclude)
    if "model" not in exclude:
        check_loaded_classes(tagger, str(path))
    return tagger


def load_from_bytes(tagger: "EarlyExitTagger", bytes_data: bytes, exclude: Iterable[str]) -> "EarlyExitTagger":
    """EarlyExitTagger.from_bytes."""
    readers = {
        "cfg": lambda data: load_cfg_dict(tagger, json.loads(data), "the component data"),
        "vocab": lambda data: tagger.vocab.from_bytes(data, exclude=exclude),
        "model": lambda data: load_model_bytes(tagger, data, "the model data"),
    }
    util.from_bytes(bytes_data, readers, exclude)
    if "model" not in exclude:
        check_loaded_classes(tagger, "the component data")
    return tagger


def load_cfg_dict(tagger: "EarlyExitTagger", cfg: Dict[str, Any], source: Any) -> None:
    """Take saved settings, after checking that they are for the configured task."""
    check_saved_task(tagger.name, tagger.cfg["task"], cfg, source)
    tagger.cfg.update(cfg)


def load_model_bytes(tagger: "EarlyExitTagger", data: bytes, source: str) -> None:
    """Load the model's bytes; any failure becomes an error naming `source`."""
    try:
        tagger.model.from_bytes(data)
    except ModelDataError as error:
        raise ValueError(f"{tagger.name}: cannot load {source}: {error}") from error
    except Exception as error:  # noqa: BLE001 - thinc's msgpack layer: any failure is a bad file
        raise ValueError(
            f"{tagger.name}: cannot load {source} ({len(data)} bytes): it is corrupt, truncated "
            f"or not an earlyexit_tagger model ({type(error).__name__}: {error})"
        ) from error


def check_loaded_classes(tagger: "EarlyExitTagger", source: str) -> None:
    """The saved labels (cfg) must give the saved model's number of outputs."""
    if tagger._is_initialized():
        check_classes(tagger.name, tagger.task.name, tagger.classes, tagger.model.shims[0].encoder.n_classes, source)


def check_saved_task(name: str, configured_task: str, cfg: Dict[str, Any], source: Any) -> None:
    """The task saved in `cfg` must be the configured one."""
    saved = cfg.get("task", configured_task)
    if saved != configured_task:
        raise ValueError(
            f"{name}: the pipeline's config sets task {configured_task!r}, but the "
            f"component saved in {source} was trained for task {saved!r}; a trained "
            f"component cannot change its task: set task = {saved!r} in config.cfg, or "
            "train a new pipeline"
        )


def check_classes(name: str, task_name: str, classes: Sequence[str], n_outputs: int, source: str) -> None:
    """The saved labels (cfg) must give the saved model's number of outputs."""
    if len(classes) != n_outputs:
        raise ValueError(
            f"{name}: in {source}, the saved labels give {len(classes)} "
            f"{task_name} classes, but the saved model has {n_outputs} outputs: "
            "the labels (cfg) and the model file come from different pipelines"
        )
