"""Exit layers as a span group, for displaCy's own "span" view.

    from spacy import displacy
    exit_spans(doc)
    displacy.render(doc, style="span",
                    options={"spans_key": "exit_layers", "colors": exit_span_colours(6)})
"""
from typing import Dict

from spacy.tokens import Doc, Span, SpanGroup

from .colours import layer_colours

DEFAULT_KEY = "exit_layers"


def exit_span_label(layer: int) -> str:
    """The label of a token's exit span: "layer 3"."""
    return f"layer {layer}"


def exit_spans(doc: Doc, key: str = DEFAULT_KEY) -> SpanGroup:
    """Set doc.spans[key] to one span per token that has an exit layer,
    labelled "layer N" (tokens without one get no span); returns the group."""
    spans = [
        Span(doc, i, i + 1, label=exit_span_label(layer))
        for i, layer in enumerate(doc._.exit_layers)
        if layer is not None
    ]
    group = SpanGroup(doc, name=key, spans=spans)
    doc.spans[key] = group
    return group


def exit_span_colours(n_layers: int) -> Dict[str, str]:
    """displaCy's "colors" option for the labels of exit_spans: the exit
    view's scale, layer 1 light to layer n_layers dark."""
    return {exit_span_label(layer).upper(): colour for layer, colour in enumerate(layer_colours(n_layers), start=1)}
