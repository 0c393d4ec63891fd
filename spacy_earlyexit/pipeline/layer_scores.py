"""Per-layer scores: every off-ramp's headline score at full depth, so a
user sees how good each exit is (e.g. pos_acc_layer_3)."""
from typing import TYPE_CHECKING, Any, Dict, List

from spacy.training import Example

from ..model import ExitSettings

if TYPE_CHECKING:
    from .component import EarlyExitTagger


def score_off_ramps(tagger: "EarlyExitTagger", examples: List[Example], **kwargs: Any) -> Dict[str, Any]:
    """Run the predicted docs at full depth and score each off-ramp's labels
    against the reference: {"<headline key>_layer_<l>": score}."""
    task = tagger.task
    copies = [task.prediction_units(eg.predicted) for eg in examples]
    outputs = tagger._predict(ExitSettings(exit_mode="off"), copies, layer_labels=True)
    scores: Dict[str, Any] = {}
    classes = tagger.classes
    key = task.score_keys[0]
    for layer in range(tagger.n_layers):
        layer_examples = []
        for eg, doc, labels, own in zip(examples, copies, outputs.layer_labels, outputs.has_output):
            layer_doc = doc.copy()
            tagger._annotate(layer_doc, labels[layer], own, classes, overwrite=True)
            layer_examples.append(Example(layer_doc, eg.reference))
        scores[f"{key}_layer_{layer + 1}"] = task.score(layer_examples, **kwargs).get(key)
    return scores
