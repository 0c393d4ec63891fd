"""The page in a real browser: headless Chromium loads it from a file, with no
console message (no script errors, no resource it failed to fetch), shows the
legend and the first token on screen, and takes a screenshot.

Skips when no Chromium/Chrome is installed (Debian: apt-get install chromium);
CHROME_BIN names a browser binary explicitly.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest
import spacy
from spacy.tokens import Span

from spacy_earlyexit.pipeline.extensions import exit_summary, set_exit_layers
from spacy_earlyexit.visualize import render

from helpers.html_tree import parse
from helpers.requirements import require

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: appended to a copy of the page (the page itself has no script): measures
#: the legend and the first token and writes the result into the DOM
PROBE = """<script>
(function () {
  function box(element) {
    if (!element) return null;
    var r = element.getBoundingClientRect(), s = getComputedStyle(element);
    var hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return {width: r.width, height: r.height,
            onScreen: r.width > 0 && r.height > 0 && r.bottom > 0 && r.right > 0
                      && r.top < innerHeight && r.left < innerWidth,
            shown: s.visibility !== "hidden" && s.display !== "none" && s.opacity !== "0",
            hit: !!hit && (element === hit || element.contains(hit)),
            text: element.textContent, background: s.backgroundColor, color: s.color};
  }
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({legend: box(document.querySelector(".ee-legend")),
                                      token: box(document.querySelector(".ee-token .ee-text"))});
  document.body.appendChild(probe);
})();
</script>"""


def find_browser() -> str:
    candidates = [os.environ.get("CHROME_BIN", "")] + [shutil.which(name) or "" for name in BROWSERS]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    require(False, "a headless browser (apt-get install chromium, or set CHROME_BIN)")
    return ""


def run_browser(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> List[str]:
    """Chromium logs every console message (errors included) as INFO:CONSOLE."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def sample_page() -> str:
    nlp = spacy.blank("en")
    doc = nlp("Angela Merkel met Emmanuel Macron in Paris on Tuesday.")
    doc.ents = [Span(doc, 0, 2, "PERSON"), Span(doc, 3, 5, "PERSON"), Span(doc, 6, 7, "GPE")]
    layers = [4, 2, 1, 5, 3, 1, 2, 1, 1, 1]
    set_exit_layers(doc, layers)
    doc._.early_exit = exit_summary(layers, 250.0, 600.0)
    return render([doc, nlp("<script>alert(1)</script>")], page=True, jupyter=False, n_layers=6)


def test_page_in_headless_chromium(tmp_path):
    browser = find_browser()
    page = tmp_path / "exits.html"
    page.write_text(sample_page(), encoding="utf8")
    screenshot = tmp_path / "exits.png"
    shot = run_browser(browser, tmp_path, f"--screenshot={screenshot}", page.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_messages(shot.stderr) == []

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf8").replace("</body>", PROBE + "</body>"), encoding="utf8")
    dump = run_browser(browser, tmp_path, "--dump-dom", probed.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert console_messages(dump.stderr) == []
    tree = parse(dump.stdout)
    probe = json.loads(next(e for e in tree.iter() if e.attrs.get("id") == "probe").text())
    legend, token = probe["legend"], probe["token"]
    assert legend["onScreen"] and legend["shown"] and legend["hit"]
    assert "exit layer" in legend["text"]
    assert token["onScreen"] and token["shown"] and token["hit"] and token["text"] == "Angela"
    assert token["background"] != "rgba(0, 0, 0, 0)"  # shaded
    # the browser parsed the escaped <script> as text: it is no element of the DOM
    assert [e for e in tree.iter() if e.tag == "script"] == [next(e for e in tree.iter() if e.tag == "script")]
    assert "<script>alert(1)</script>" in tree.find_all("ee-tokens")[1].text()
