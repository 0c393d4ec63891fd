"""Write the sample page behind docs/exits.png (and, with a browser, the PNG).

    python docs/exits_sample.py docs/exits.html [docs/exits.png]

The docs are built by hand: entities, POS tags, words and exit layers are
illustrative (a 6-layer encoder in token mode: function words and punctuation
leave at the first off-ramps, names and ambiguous words go deeper), not the
output of a trained pipeline.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import spacy
from spacy.tokens import Span

from spacy_earlyexit.pipeline.extensions import exit_summary, set_exit_layers
from spacy_earlyexit.visualize import render

SETTINGS = {"exit_mode": "token", "threshold": 0.05, "window": 0, "threshold_multipliers": [1, 4, 16, 16, 16, 16]}


def with_exits(doc, layers):
    set_exit_layers(doc, layers)
    # cost in proportion to the layers each token runs (the real cost model also counts attention)
    doc._.early_exit = exit_summary(layers, float(sum(layers)), 6.0 * len(layers))
    return doc


def sample_docs():
    en = spacy.blank("en")
    ner = en("Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the €2.5 billion plan. "
             "Shares of Siemens rose 3% after the announcement.")
    ner.ents = [Span(ner, 0, 2, "PERSON"), Span(ner, 3, 5, "PERSON"), Span(ner, 6, 7, "GPE"), Span(ner, 8, 9, "DATE"),
                Span(ner, 12, 15, "MONEY"), Span(ner, 19, 20, "ORG"), Span(ner, 21, 23, "PERCENT")]
    ner_layers = [2, 3, 1, 4, 3, 1, 2, 1, 3, 1, 1, 1, 2, 1, 3, 1, 1, 2, 1, 5, 2, 1, 2, 1, 1, 1, 1]
    ner.user_data["title"] = "NER"
    pos = en("I saw her duck under the table .\nTime flies like an arrow ; fruit flies like a banana .")
    tags = ["PRON", "VERB", "PRON", "VERB", "ADP", "DET", "NOUN", "PUNCT", "SPACE",
            "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT", "NOUN", "NOUN", "VERB", "DET", "NOUN", "PUNCT"]
    for token, tag in zip(pos, tags):
        token.pos_ = tag
    pos_layers = [1, 2, 3, 6, 4, 1, 1, 1, 1, 3, 5, 4, 1, 1, 1, 2, 6, 5, 1, 1, 1]
    pos.user_data["title"] = "POS"
    zh = spacy.blank("zh")
    words = zh.make_doc("我爱北京天安门，天安门上太阳升。")
    with words.retokenize() as retokenizer:
        for start, end in ((2, 4), (4, 7), (8, 11), (12, 14)):
            retokenizer.merge(words[start:end])
    words.user_data["title"] = "Chinese word segmentation"
    return [with_exits(ner, ner_layers), with_exits(pos, pos_layers), with_exits(words, [1, 1, 2, 4, 1, 3, 1, 2, 2, 1])]


def screenshot(page: Path, png: Path, width: int = 1000, height: int = 760) -> None:
    browser = shutil.which("chromium") or shutil.which("google-chrome")
    if not browser:
        raise SystemExit("no chromium to take the screenshot (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--force-device-scale-factor=1", f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True)


if __name__ == "__main__":
    page = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/exits.html")
    page.write_text(render(sample_docs(), page=True, jupyter=False, n_layers=6, settings=SETTINGS), encoding="utf8")
    if len(sys.argv) > 2:
        screenshot(page, Path(sys.argv[2]))
