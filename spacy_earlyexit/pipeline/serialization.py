"""Loading a saved earlyexit_tagger: its settings (cfg.json, parsed by the
standard library) and its model (safetensors weights, transformer config,
tokenizer), with checks that the saved data fits the pipeline loading it.
Every error names the file or data, and what is wrong with it."""
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Sequence

from spacy import util

from ..layers.shim import ModelDataError
from ..model import ExitSettings

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
    """Take saved settings, after checking that they are for the configured task.

    The exit setting comes from the pipeline config. Pipelines saved by
    versions before 0.1.0 kept the one they ran with in cfg (key "exit"),
    while their config.cfg showed the factory's defaults: such a saved
    setting is taken, as those versions did, with a warning where it differs
    from the config."""
    check_saved_task(tagger.name, tagger.cfg["task"], cfg, source)
    cfg = dict(cfg)
    saved_exit = cfg.pop("exit", None)
    tagger.cfg.update(cfg)
    if saved_exit is not None:
        take_saved_exit_setting(tagger, saved_exit, source)


def take_saved_exit_setting(tagger: "EarlyExitTagger", saved: Dict[str, Any], source: Any) -> None:
    """Apply an exit setting saved in cfg by an earlier version."""
    try:
        settings = ExitSettings.from_dict(saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{tagger.name}: the exit setting saved in {source} is not valid ({error})") from error
    if settings != tagger.exit_settings:
        warnings.warn(
            f"{tagger.name}: {source} was saved by an earlier spacy-earlyexit, which kept the exit "
            f"setting there instead of in config.cfg; it is used ({settings.describe()}) and the "
            "config's exit settings are ignored. Save the pipeline again (nlp.to_disk) to make "
            "config.cfg hold it.",
            UserWarning,
            stacklevel=2,
        )
    tagger.configure_exit(**settings.to_dict())


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
    """The saved labels (cfg) must give the saved model's number of outputs,
    and the configured exit setting must fit the loaded model's depth."""
    if tagger._is_initialized():
        check_classes(tagger.name, tagger.task.name, tagger.classes, tagger.model.shims[0].encoder.n_classes, source)
        tagger._check_settings(tagger.exit_settings)


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
