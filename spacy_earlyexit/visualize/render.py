"""See the exits: HTML in displaCy's manner, every token shaded by the layer
where it left the encoder, with the task's annotation.

    from spacy_earlyexit.visualize import render
    html = render(nlp.pipe(texts), page=True)        # a whole page
    render(doc)                                      # in a notebook: shown inline

The markup has inline styles only (no scripts, fonts or style sheets to
fetch), so a saved page works offline and in a notebook. Per token:

    <span class="ee-token" data-i="3" data-exit-layer="2" title="exit layer 2 of 6">
      <span class="ee-text" style="background: ...">Paris</span>
      <span class="ee-label">PROPN</span>             (POS or tag view only)
    </span>

followed by the token's own whitespace (token.whitespace_) as text: the
text of the page is the text of the doc. Entities wrap their tokens in
`<mark class="ee-ent" data-label="LOC">` with the label in a
`<span class="ee-ent-label">`, in displaCy's colours. The legend (class
"ee-legend") comes first, then per doc a summary line ("ee-summary") and the
tokens ("ee-tokens").
"""
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from spacy.displacy.render import EntityRenderer
from spacy.tokens import Doc, Span
from spacy.util import escape_html, is_in_jupyter

from .colours import layer_colours, text_colour

STYLES = ("exits",)
#: what is shown with the exits; "auto": entities if the doc has any, else
#: POS, else fine-grained tags, else word boxes for languages written
#: without spaces (a segmentation pipeline's words), else nothing
ANNOTATIONS = ("auto", "ents", "pos", "tag", "words", "none")
UNSPACED_LANGS = ("zh", "ja", "th", "lo", "km", "my", "bo")
#: keys of the exit settings shown in the summary, as in ExitSettings
SETTING_KEYS = ("exit_mode", "threshold", "window", "threshold_multipliers", "sentence_score", "max_layer")

FONT = ("-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif, "
        "'Apple Color Emoji', 'Segoe UI Emoji', 'Segoe UI Symbol'")
UNSHADED = "transparent"
TPL_PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head><meta charset="utf-8"><title>early exits</title></head>
<body style="font-size: 16px; font-family: {font}; padding: 3rem 2rem; direction: {dir}; color: #1a1a1a; background: #ffffff">
{content}
</body>
</html>
"""
TPL_FIGURE = '<figure class="ee-figure" style="margin: 0 0 2.5rem 0">{content}</figure>'


def render(
    docs: Union[Doc, Span, Iterable[Union[Doc, Span]]],
    *,
    style: str = "exits",
    page: bool = False,
    jupyter: Optional[bool] = None,
    n_layers: Optional[int] = None,
    annotation: str = "auto",
    settings: Optional[Mapping[str, Any]] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Optional[str]:
    """HTML of docs with every token shaded by its exit layer.

    docs: a Doc or Span, or an iterable of them (a Span is shown as its own doc).
    style: "exits" (shading by exit layer; the only style so far).
    page: a whole HTML page (UTF-8, with <!DOCTYPE>) instead of a fragment.
    jupyter: show the markup in a notebook and return None, as
        spacy.displacy.render does; None: when running in Jupyter or Colab.
    n_layers: the encoder's depth L (the legend runs from layer 1 to L);
        default: the largest doc._.early_exit["n_layers"], else the largest
        exit layer in the docs.
    annotation: the task's annotation shown with the exits, one of
        ANNOTATIONS: "ents" (labelled spans), "pos" / "tag" (under each
        token), "words" (a box per token: the words of Chinese segmentation),
        "none", or "auto" (chosen per doc, see ANNOTATIONS).
    settings: the exit settings used (ExitSettings.to_dict() or some of its
        keys), shown in every doc's summary; keys missing there are taken
        from doc._.early_exit when it has them.
    options: displaCy's entity options; "colors" maps labels to colours (on
        top of displaCy's defaults and registered displacy_colors).
    Returns the markup, or None when it was displayed in a notebook.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    if annotation not in ANNOTATIONS:
        raise ValueError(f"annotation must be one of {', '.join(ANNOTATIONS)}; got {annotation!r}")
    if isinstance(docs, (Doc, Span)):
        docs = [docs]
    docs = list(docs)
    # a span's exit layers first: as_doc() moves the character offsets they are kept under
    layers = [[token._.exit_layer for token in doc] for doc in docs]
    docs = [doc.as_doc() if isinstance(doc, Span) else doc for doc in docs]
    depth = resolve_n_layers(docs, layers, n_layers)
    colours = layer_colours(depth) if depth else []
    entity_colours = EntityRenderer(dict(options or {}))
    parts = [legend(depth)]
    for doc, doc_layers in zip(docs, layers):
        chosen = choose_annotation(doc, annotation)
        body = summary_line(doc, doc_layers, depth, settings) + render_tokens(
            doc, doc_layers, colours, depth, chosen, entity_colours
        )
        title = doc.user_data.get("title") if doc.user_data else None
        if title:
            body = f'<h2 style="margin: 0 0 0.3rem 0">{escape_html(str(title))}</h2>' + body
        parts.append(TPL_FIGURE.format(content=body))
    lang = docs[0].lang_ if docs else "en"
    direction = docs[0].vocab.writing_system.get("direction", "ltr") if docs else "ltr"
    markup = (f'<div class="ee-render" lang="{escape_html(lang)}" dir="{direction}" '
              f'style="font-family: {FONT}; direction: {direction}">' + "\n".join(parts) + "</div>")
    if page:
        markup = TPL_PAGE.format(lang=escape_html(lang), dir=direction, font=FONT, content=markup)
    if jupyter or (jupyter is None and is_in_jupyter()):
        from IPython.display import HTML, display

        display(HTML(f'<span class="tex2jax_ignore">{markup}</span>'))  # no MathJax on "$"
        return None
    return markup


def resolve_n_layers(docs: Sequence[Doc], layers: Sequence[Sequence[Optional[int]]], n_layers: Optional[int]) -> int:
    """The depth of the legend: n_layers, else the docs' recorded depth, else
    the largest exit layer seen (0 when no token has one). ValueError when a
    token exited above it."""
    seen = max((layer for doc_layers in layers for layer in doc_layers if layer is not None), default=0)
    if n_layers is None:
        recorded = [doc._.early_exit.get("n_layers") for doc in docs if isinstance(doc._.early_exit, dict)]
        n_layers = max([depth for depth in recorded if depth] + [seen])
    if n_layers < 0 or seen > n_layers:
        raise ValueError(f"n_layers={n_layers}, but a token exited at layer {seen}")
    return int(n_layers)


def choose_annotation(doc: Doc, annotation: str) -> str:
    """The annotation shown for `doc` (see ANNOTATIONS)."""
    if annotation != "auto":
        return annotation
    if doc.ents:
        return "ents"
    if doc.has_annotation("POS"):
        return "pos"
    if doc.has_annotation("TAG"):
        return "tag"
    if doc.lang_ in UNSPACED_LANGS:
        return "words"
    return "none"


#: inline styles of the token view's elements
COLUMN_STYLE = ("display: inline-flex; flex-direction: column; align-items: center; vertical-align: top; "
                "margin-bottom: 0.35em")
LABEL_STYLE = "font-size: 0.68em; font-weight: 600; letter-spacing: 0.03em; color: #555; line-height: 1.3"
MARK_STYLE = ("background: {colour}; padding: 0.3em 0.35em; margin: 0 0.15em; border-radius: 0.4em; "
              "line-height: 2.2; color: inherit; -webkit-box-decoration-break: clone; box-decoration-break: clone")
ENT_LABEL_STYLE = ("font-size: 0.72em; font-weight: bold; line-height: 1; vertical-align: middle; "
                   "margin-left: 0.4rem; margin-right: 0.1rem")


def chip_style(background: str, boxed: bool) -> str:
    """The style of a token's text: shaded by its layer (UNSHADED: none),
    boxed to show a word's extent."""
    if background == UNSHADED and not boxed:
        return "padding: 0.12em 0"
    style = "padding: 0.12em 0.28em; margin: 0 1px; border-radius: 0.3em; line-height: 1.9"
    if background != UNSHADED:
        style += f"; background: {background}; color: {text_colour(background)}"
    if boxed:
        style += "; box-shadow: inset 0 0 0 1.5px #4a4a4a"
    return style


def render_tokens(
    doc: Doc,
    layers: Sequence[Optional[int]],
    colours: Sequence[str],
    n_layers: int,
    annotation: str,
    entity_colours: EntityRenderer,
) -> str:
    """The "ee-tokens" block of one doc: a chip per token, its whitespace
    after it as text, entities as marks, POS or tags under the tokens.

    layers: the exit layer of every token (None: not recorded); colours: one
    per layer 1..n_layers (empty: nothing is shaded); annotation: one of
    ANNOTATIONS other than "auto".
    """
    labelled = annotation in ("pos", "tag")
    ent_at = {ent.start: ent for ent in doc.ents} if annotation == "ents" else {}
    chips = {layer: chip_style(colour, annotation == "words") for layer, colour in enumerate(colours, start=1)}
    unshaded = {boxed: chip_style(UNSHADED, boxed) for boxed in (False, True)}
    ent_end, ent_label = -1, ""
    out: List[str] = []
    for token, layer in zip(doc, layers):
        i = token.i
        if i in ent_at:
            ent_end, ent_label = ent_at[i].end, ent_at[i].label_
            colour = entity_colours.colors.get(ent_label.upper(), entity_colours.default_color)
            out.append(f'<mark class="ee-ent" data-label="{escape_html(ent_label)}" '
                       f'style="{MARK_STYLE.format(colour=colour)}">')
        label = getattr(token, f"{annotation}_") if labelled else ""
        title = "no exit layer recorded" if layer is None else f"exit layer {layer} of {n_layers}"
        title += f" · {label}" if label else ""
        # whitespace tokens keep their exit layer (in the title) but no chip:
        # a shaded newline or run of spaces is a blot, not information
        if token.is_space:
            classes, style, chip = "ee-token ee-space", "", unshaded[False]
        else:
            classes = "ee-token"
            style = f' style="{COLUMN_STYLE}"' if labelled else ""
            chip = chips[layer] if layer is not None and chips else unshaded[annotation == "words"]
        layer_attr = "" if layer is None else f' data-exit-layer="{layer}"'
        out.append(f'<span class="{classes}" data-i="{i}"{layer_attr} title="{escape_html(title)}"{style}>'
                   f'<span class="ee-text" style="{chip}">{escape_html(token.text)}</span>')
        if labelled and not token.is_space:
            out.append(f'<span class="ee-label" style="{LABEL_STYLE}">{escape_html(label) or "&nbsp;"}</span>')
        out.append("</span>")
        if i == ent_end - 1:
            out.append(f'<span class="ee-ent-label" style="{ENT_LABEL_STYLE}">{escape_html(ent_label)}</span></mark>')
        out.append(token.whitespace_)
    line_height = "1.5" if labelled else "2.3"
    return (f'<div class="ee-tokens" style="white-space: pre-wrap; line-height: {line_height}; font-size: 1.05em">'
            + "".join(out) + "</div>")


def legend(n_layers: int) -> str:
    """The "ee-legend" block: one swatch per layer 1..n_layers, or a note
    when no token has an exit layer."""
    if n_layers < 1:
        return (
            '<div class="ee-legend" style="margin-bottom: 1.5rem; color: #555">'
            "no exit layers recorded: tokens are not shaded</div>"
        )
    swatches = "".join(
        f'<span class="ee-swatch" data-layer="{layer}" title="exit layer {layer} of {n_layers}" '
        f'style="display: inline-block; min-width: 1.6em; padding: 0.15em 0.3em; text-align: center; '
        f'background: {colour}; color: {text_colour(colour)}; font-weight: 600">{layer}</span>'
        for layer, colour in enumerate(layer_colours(n_layers), start=1)
    )
    return (
        '<div class="ee-legend" style="margin-bottom: 1.5rem; font-size: 0.85em; color: #333; '
        'display: flex; align-items: center; gap: 0.6em; flex-wrap: wrap">'
        '<span style="font-weight: 600">exit layer</span>'
        '<span style="color: #666">early</span>'
        f'<span style="display: inline-flex; border-radius: 0.3em; overflow: hidden; border: 1px solid #ccc">{swatches}</span>'
        f'<span style="color: #666">late (full depth: {n_layers})</span>'
        '<span style="color: #999">· hover a token for its layer</span></div>'
    )


def _number(value: Any, pattern: str) -> Optional[str]:
    try:
        return pattern.format(float(value))
    except (TypeError, ValueError):
        return None


def summary_items(
    doc: Doc, layers: Sequence[Optional[int]], n_layers: int, settings: Optional[Mapping[str, Any]] = None
) -> Dict[str, str]:
    """The facts of a doc's summary line, formatted: tokens, mean exit layer,
    FLOPs speed-up and the exit settings that are known."""
    record = doc._.early_exit if isinstance(doc._.early_exit, dict) else {}
    known = [layer for layer in layers if layer is not None]
    items: Dict[str, str] = {"tokens": f"{len(doc):,}"}
    mean = record.get("exit_layer_mean", sum(known) / len(known) if known else None)
    if known:
        items["mean exit layer"] = f"{mean:.2f} of {n_layers}"
    else:
        items["exit layers"] = "none recorded"
    speedup = _number(record.get("flops_speedup"), "{:.2f}×")
    if speedup:
        items["FLOPs speed-up"] = speedup
    used = {key: record[key] for key in SETTING_KEYS if key in record}
    used.update({key: value for key, value in (settings or {}).items() if key in SETTING_KEYS})
    if "exit_mode" in used:
        items["exit mode"] = str(used["exit_mode"])
    if used.get("max_layer") is not None:
        items["max layer"] = str(used["max_layer"])
    if used.get("exit_mode") != "off":
        if used.get("threshold") is not None:
            items["threshold"] = f"{float(used['threshold']):g}"
        if used.get("exit_mode") != "sentence" and used.get("window") is not None:
            items["window"] = str(used["window"])
        if used.get("threshold_multipliers"):
            items["threshold × per layer"] = ", ".join(f"{float(m):g}" for m in used["threshold_multipliers"])
        if used.get("exit_mode") == "sentence" and used.get("sentence_score"):
            items["sentence score"] = str(used["sentence_score"])
    return items


def summary_line(
    doc: Doc, layers: Sequence[Optional[int]], n_layers: int, settings: Optional[Mapping[str, Any]] = None
) -> str:
    """The "ee-summary" block of one doc (see summary_items)."""
    items = summary_items(doc, layers, n_layers, settings)
    text = " · ".join(
        f'<span data-key="{escape_html(key)}">{escape_html(key)} <b>{escape_html(value)}</b></span>'
        for key, value in items.items()
    )
    return f'<div class="ee-summary" style="font-size: 0.8em; color: #555; margin-bottom: 0.5rem">{text}</div>'
