"""Checks that a saved earlyexit_tagger fits the pipeline loading it; each
error names the file or data, and what is wrong with it."""
from typing import Any, Dict, Sequence


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


def model_load_error(name: str, source: str, n_bytes: int, error: Exception) -> ValueError:
    """The error for model bytes that thinc could not read."""
    return ValueError(
        f"{name}: cannot load {source} ({n_bytes} bytes): it is corrupt, truncated "
        f"or not an earlyexit_tagger model ({type(error).__name__}: {error})"
    )
