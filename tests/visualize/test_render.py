"""The exit view's HTML, checked by parsing it: docs built by hand (no model)."""
import importlib
import sys
import time
import types

import pytest
import spacy
from spacy import displacy
from spacy.displacy.render import DEFAULT_LABEL_COLORS
from spacy.tokens import Span

from spacy_earlyexit.pipeline.extensions import exit_summary, set_exit_layers
from spacy_earlyexit.visualize import exit_span_colours, exit_spans, render
from spacy_earlyexit.visualize.colours import contrast_ratio, layer_colours, relative_luminance, text_colour

from helpers.html_tree import parse

EN = spacy.blank("en")
ZH = spacy.blank("zh")


def ner_doc():
    doc = EN("Alice  lives in New York City.\nBob too.")
    # tokens: Alice, " ", lives, in, New, York, City, ., \n, Bob, too, .
    doc.ents = [Span(doc, 0, 1, "PERSON"), Span(doc, 4, 7, "GPE"), Span(doc, 9, 10, "PERSON")]
    layers = [2, 1, 1, 1, 3, 4, 5, 1, 1, 6, 1, 1]
    set_exit_layers(doc, layers)
    doc._.early_exit = {**exit_summary(layers, 200.0, 600.0), "exit_mode": "token", "threshold": 0.1}
    return doc, layers


def tokens_of(tree):
    return tree.find_all("ee-token")


def test_every_token_once_in_order_with_its_exit_layer():
    doc, layers = ner_doc()
    tree = parse(render(doc, jupyter=False))
    tokens = tokens_of(tree)
    assert [t.find("ee-text").text() for t in tokens] == [t.text for t in doc]
    assert [int(t.attrs["data-i"]) for t in tokens] == list(range(len(doc)))
    assert [int(t.attrs["data-exit-layer"]) for t in tokens] == layers
    assert [t.attrs["title"].split(" · ")[0] for t in tokens] == [f"exit layer {layer} of 6" for layer in layers]


def test_text_and_whitespace_are_the_docs():
    doc, _ = ner_doc()
    block = parse(render(doc, jupyter=False)).find("ee-tokens")
    assert block.text(skip_classes=("ee-label", "ee-ent-label")) == doc.text
    assert "white-space: pre-wrap" in block.attrs["style"]


def test_shading_follows_the_scale_and_text_stays_readable():
    doc, layers = ner_doc()
    colours = layer_colours(6)
    for token, layer in zip(tokens_of(parse(render(doc, jupyter=False))), layers):
        style = token.find("ee-text").attrs["style"]
        if doc[int(token.attrs["data-i"])].is_space:
            assert "background" not in style
            continue
        assert f"background: {colours[layer - 1]}" in style
        assert f"color: {text_colour(colours[layer - 1])}" in style


def test_layer_colours_darken_and_keep_contrast():
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # WCAG's textbook grey
    for n_layers in (1, 2, 6, 12, 24):
        colours = layer_colours(n_layers)
        assert len(colours) == n_layers
        luminance = [relative_luminance(c) for c in colours]
        assert all(a > b for a, b in zip(luminance, luminance[1:]))  # lighter = earlier
        assert all(contrast_ratio(c, text_colour(c)) >= 4.5 for c in colours)  # WCAG AA
        assert contrast_ratio(colours[0], "#ffffff") > 1.1  # layer 1 still shows on a white page


def test_legend_runs_from_layer_one_to_the_depth():
    doc, _ = ner_doc()
    tree = parse(render(doc, jupyter=False))
    assert [int(s.attrs["data-layer"]) for s in tree.find("ee-legend").find_all("ee-swatch")] == [1, 2, 3, 4, 5, 6]
    tree = parse(render(doc, jupyter=False, n_layers=12))
    assert len(tree.find_all("ee-swatch")) == 12
    doc._.early_exit["n_layers"] = 8
    assert len(parse(render(doc, jupyter=False)).find_all("ee-swatch")) == 8
    with pytest.raises(ValueError, match="layer 6"):
        render(doc, jupyter=False, n_layers=4)


def test_entities_wrap_their_tokens_in_displacy_colours():
    doc, _ = ner_doc()
    tree = parse(render(doc, jupyter=False))
    marks = tree.find_all("ee-ent")
    assert [m.attrs["data-label"] for m in marks] == [e.label_ for e in doc.ents]
    for mark, ent in zip(marks, doc.ents):
        inside = [int(t.attrs["data-i"]) for t in mark.find_all("ee-token")]
        assert inside == list(range(ent.start, ent.end))
        assert mark.find("ee-ent-label").text() == ent.label_
        assert f"background: {DEFAULT_LABEL_COLORS[ent.label_]}" in mark.attrs["style"]
    outside = [t for t in tokens_of(tree) if not any(a.tag == "mark" for a in t.ancestors())]
    in_ents = {i for ent in doc.ents for i in range(ent.start, ent.end)}
    assert {int(t.attrs["data-i"]) for t in outside} == set(range(len(doc))) - in_ents


def test_entity_colours_option():
    doc, _ = ner_doc()
    tree = parse(render(doc, jupyter=False, options={"colors": {"PERSON": "#123456"}}))
    assert "background: #123456" in tree.find("ee-ent").attrs["style"]


@pytest.mark.parametrize("attr", ["pos", "tag"])
def test_pos_or_tag_under_each_token(attr):
    doc = EN("Alice lives in Paris .")
    values = ["PROPN", "VERB", "ADP", "PROPN", "PUNCT"] if attr == "pos" else ["NNP", "VBZ", "IN", "NNP", "."]
    for token, value in zip(doc, values):
        setattr(token, f"{attr}_", value)
    set_exit_layers(doc, [3, 1, 1, 2, 1])
    tree = parse(render(doc, jupyter=False))  # auto: the annotation the doc has
    assert [t.find("ee-label").text() for t in tokens_of(tree)] == values
    assert [t.attrs["title"] for t in tokens_of(tree)][0] == f"exit layer 3 of 3 · {values[0]}"
    assert not tree.find_all("ee-ent")


def test_segmented_chinese_words_are_boxed():
    doc = ZH.make_doc("我爱北京天安门")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[2:4])
        retokenizer.merge(doc[4:7])
    set_exit_layers(doc, [1, 2, 5, 3])
    tree = parse(render(doc, jupyter=False))
    chips = [t.find("ee-text") for t in tokens_of(tree)]
    assert [c.text() for c in chips] == ["我", "爱", "北京", "天安门"]
    assert all("box-shadow" in c.attrs["style"] for c in chips)
    assert tree.find("ee-render").attrs["lang"] == "zh"
    unboxed = parse(render(doc, jupyter=False, annotation="none"))
    assert not any("box-shadow" in c.attrs["style"] for c in unboxed.find_all("ee-text"))


def test_script_in_text_is_escaped():
    doc = EN('<script>alert("x")</script> & done')
    doc.ents = [Span(doc, 0, 1, "ORG")]
    set_exit_layers(doc, [1] * len(doc))
    doc.user_data["title"] = "<script>alert(1)</script>"
    markup = render(doc, jupyter=False, page=True)
    assert "<script" not in markup.lower()
    tree = parse(markup)
    assert not [e for e in tree.iter() if e.tag == "script"]
    assert tree.find("ee-tokens").text(skip_classes=("ee-ent-label",)) == doc.text
    assert "<script>alert(1)</script>" in [e.text() for e in tree.iter() if e.tag == "h2"]


def test_empty_doc():
    doc = EN("")
    tree = parse(render(doc, jupyter=False, page=True))
    assert tokens_of(tree) == []
    assert "no exit layers" in tree.find("ee-legend").text()
    assert "tokens 0" in tree.find("ee-summary").text()
    assert parse(render([], jupyter=False)).find("ee-legend")


def test_whitespace_only_doc():
    doc = EN("  \n\t ")
    set_exit_layers(doc, [1] * len(doc))
    tree = parse(render(doc, jupyter=False))
    assert tree.find("ee-tokens").text() == doc.text
    assert len(tokens_of(tree)) == len(doc) > 0


def test_doc_without_exit_layers_is_unshaded_with_a_note():
    doc = EN("No model ran on this .")
    tree = parse(render(doc, jupyter=False))
    assert [t.find("ee-text").text() for t in tokens_of(tree)] == [t.text for t in doc]
    assert not any("data-exit-layer" in t.attrs for t in tokens_of(tree))
    assert not any("background" in c.attrs["style"] for c in tree.find_all("ee-text"))
    assert "no exit layers recorded" in tree.find("ee-legend").text()
    assert "exit layers none recorded" in tree.find("ee-summary").text()


def test_summary_line():
    doc, layers = ner_doc()
    summary = parse(render(doc, jupyter=False)).find("ee-summary")
    values = {span.attrs["data-key"]: span.text() for span in summary.children
              if not isinstance(span, str)}
    assert values["mean exit layer"] == f"mean exit layer {sum(layers) / len(layers):.2f} of 6"
    assert values["FLOPs speed-up"] == "FLOPs speed-up 3.00×"
    assert values["exit mode"] == "exit mode token"
    assert values["threshold"] == "threshold 0.1"
    # an explicit settings mapping wins over the doc's keys and adds the rest
    summary = parse(render(doc, jupyter=False, settings={
        "threshold": 0.05, "window": 1, "threshold_multipliers": [1, 4, 4, 4, 4, 4]})).find("ee-summary")
    text = summary.text()
    assert "threshold 0.05" in text and "window 1" in text and "1, 4, 4, 4, 4, 4" in text
    off = parse(render(doc, jupyter=False, settings={"exit_mode": "off"})).find("ee-summary").text()
    assert "exit mode off" in off and "threshold" not in off and "max layer" not in off
    capped = parse(render(doc, jupyter=False, settings={"exit_mode": "off", "max_layer": 4})).find("ee-summary")
    assert "max layer 4" in capped.text()


def test_page_is_a_whole_document():
    doc, _ = ner_doc()
    markup = render([doc, EN("")], jupyter=False, page=True)
    assert markup.startswith("<!DOCTYPE html>")
    tree = parse(markup)
    assert [e.attrs.get("charset") for e in tree.iter() if e.tag == "meta"] == ["utf-8"]
    assert len(tree.find_all("ee-figure")) == 2
    assert len(tree.find_all("ee-legend")) == 1


def test_jupyter_displays_instead_of_returning(monkeypatch):
    shown = []
    display_module = types.ModuleType("IPython.display")
    display_module.HTML = lambda markup: ("HTML", markup)
    display_module.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    doc, _ = ner_doc()
    assert render(doc, jupyter=True) is None
    assert shown and "ee-token" in shown[0][1]
    monkeypatch.setattr(importlib.import_module("spacy_earlyexit.visualize.render"), "is_in_jupyter", lambda: True)
    assert render(doc) is None and len(shown) == 2  # auto-detected, as displacy does
    assert render(doc, jupyter=False).startswith("<div")


def test_bad_arguments():
    doc, _ = ner_doc()
    with pytest.raises(ValueError, match="style"):
        render(doc, style="dep")
    with pytest.raises(ValueError, match="annotation"):
        render(doc, annotation="lemma")


def test_a_span_renders_as_its_own_doc():
    doc, layers = ner_doc()
    tree = parse(render(doc[4:7], jupyter=False))
    assert [t.find("ee-text").text() for t in tokens_of(tree)] == ["New", "York", "City"]
    assert [int(t.attrs["data-exit-layer"]) for t in tokens_of(tree)] == layers[4:7]


@pytest.mark.timing
def test_long_doc_renders_fast():
    words = ("Alice met Bob in Paris on Tuesday , and they talked . " * 500).split()[:5000]
    doc = EN.make_doc(" ".join(words))
    assert len(doc) == 5000
    doc.ents = [Span(doc, i, i + 1, "PERSON") for i in range(0, 5000, 12)]
    set_exit_layers(doc, [1 + i % 6 for i in range(5000)])
    start = time.perf_counter()
    markup = render(doc, jupyter=False, page=True)
    seconds = time.perf_counter() - start
    assert seconds < 2.0, f"5,000 tokens took {seconds:.2f} s"  # about 0.05 s here
    assert markup.count('class="ee-token"') == 5000


def test_exit_spans_for_displacy():
    doc, layers = ner_doc()
    group = exit_spans(doc)
    assert doc.spans["exit_layers"] is group
    assert [(s.start, s.end, s.label_) for s in group] == [(i, i + 1, f"layer {layer}") for i, layer in enumerate(layers)]
    markup = displacy.render(doc, style="span", jupyter=False,
                             options={"spans_key": "exit_layers", "colors": exit_span_colours(6)})
    assert "layer 6" in markup and layer_colours(6)[5] in markup
    no_layers = EN("plain text")
    assert len(exit_spans(no_layers, key="exits")) == 0
