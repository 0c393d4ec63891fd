"""The grid of a sweep checked against every pipeline before any work: a
setting a pipeline cannot run (an entity rule on a POS pipeline, a depth cap
or threshold schedule deeper than its encoder, an unknown setting) is named
with the pipeline, so that a sweep never fails after hours of timing."""
from typing import Any, Mapping, Sequence

from spacy.language import Language

from ..model.batch_run import check_entity_classes
from ..model.exit_policy import exit_rule
from .grid import setting_name
from .timing import COMPONENT


def check_grid(pipelines: Mapping[str, Language], grid: Sequence[Mapping[str, Any]]) -> None:
    """Raise ValueError naming the first setting of `grid` that one of
    `pipelines` (name -> loaded pipeline with an earlyexit_tagger) cannot
    run, and why; the same checks the component makes when it is called
    (ExitSettings validation, exit_rule for its depth, the entity rule's
    need for an entity task)."""
    for model_name, nlp in pipelines.items():
        tagger = nlp.get_pipe(COMPONENT)
        n_layers = tagger.n_layers
        classes = tagger.classes
        entity_classes = tagger.task.entity_classes(classes)
        for setting in grid:
            try:
                settings = tagger.exit_settings.updated(**setting)
                rule = exit_rule(settings, n_layers)
                check_entity_classes(rule, entity_classes, len(classes))
            except ValueError as error:
                raise ValueError(
                    f"pipeline {model_name!r} ({n_layers} layers, task {tagger.cfg['task']!r}) cannot run "
                    f"the sweep setting '{setting_name(setting)}': {error}"
                ) from None
