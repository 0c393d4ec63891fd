"""The registered scorer: task scores plus exit statistics."""
from typing import Any, Callable, Dict, Iterable

from spacy.training import Example
from spacy.util import registry

from .tasks import get_task


def score_early_exit(examples: Iterable[Example], task: str = "ner", **kwargs) -> Dict[str, Any]:
    """Scores of `task` plus `exit_layer_mean` (over all tokens) and
    `flops_speedup` (total full-depth multiply-adds over total spent)."""
    examples = list(examples)
    scores: Dict[str, Any] = dict(get_task(task).score(examples, **kwargs))
    layers = [t._.exit_layer for eg in examples for t in eg.predicted if t._.exit_layer]
    summaries = [eg.predicted._.early_exit for eg in examples if eg.predicted._.early_exit]
    cost = sum(s["flops"] for s in summaries)
    full = sum(s["flops_full"] for s in summaries)
    scores["exit_layer_mean"] = sum(layers) / len(layers) if layers else None
    scores["flops_speedup"] = full / cost if cost > 0 else None
    return scores


@registry.scorers("spacy_earlyexit.scorer.v1")
def make_early_exit_scorer() -> Callable[..., Dict[str, Any]]:
    return score_early_exit
