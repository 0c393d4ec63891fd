"""The resident-memory guard of corpus/memory.py: when it reads RSS, when it
releases, how its mark moves; and that the component counts every doc it
annotates, through nlp.pipe and nlp() alike, without changing annotations."""
from typing import List

import pytest

from spacy_earlyexit.corpus import memory

MB = 2**20


@pytest.fixture
def guard(monkeypatch):
    """The guard on a fake process: RSS readings from a list, releases recorded
    (a release sets RSS to `after_release`)."""
    state = {"rss": 1000 * MB, "after_release": 900 * MB, "readings": 0, "released": []}

    def read() -> int:
        state["readings"] += 1
        return state["rss"]

    def trim() -> None:
        state["released"].append(state["rss"])
        state["rss"] = state["after_release"]

    class FakeLibc:
        def malloc_trim(self, pad: int) -> int:
            trim()
            return 1

    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    monkeypatch.setattr(memory, "resident_bytes", read)
    monkeypatch.setattr(memory, "RELEASE_EVERY_DOCS", 0)
    monkeypatch.setattr(memory, "RELEASE_ON_GROWTH", 0.05)
    monkeypatch.setattr(memory, "MIN_GROWTH_MB", 64)
    monkeypatch.setattr(memory, "CHECK_EVERY_DOCS", 100)
    monkeypatch.setattr(memory, "_docs_since_check", 0)
    monkeypatch.setattr(memory, "_docs_since_release", 0)
    monkeypatch.setattr(memory, "_mark", None)
    monkeypatch.setattr(memory, "releases", 0)
    return state


def test_first_reading_sets_the_mark_and_nothing_is_released(guard) -> None:
    assert not memory.count_docs(99)  # below the interval: no reading
    assert guard["readings"] == 0
    assert not memory.count_docs(1)
    assert guard["readings"] == 1 and memory._mark == 1000 * MB and guard["released"] == []


def test_growth_below_both_limits_is_left_alone(guard) -> None:
    memory.count_docs(100)
    guard["rss"] = 1000 * MB + 64 * MB  # 6.4% but not more than 64 MB above... 64 MB is the floor
    assert not memory.count_docs(100)
    guard["rss"] = 1000 * MB + 50 * MB  # 5%: neither above 5% nor 64 MB
    assert not memory.count_docs(100)
    assert guard["released"] == []


def test_growth_above_the_share_releases_and_moves_the_mark(guard) -> None:
    memory.count_docs(100)
    guard["rss"] = 1100 * MB  # +10%, +100 MB
    assert memory.count_docs(100)
    assert guard["released"] == [1100 * MB] and memory.releases == 1
    assert memory._mark == 900 * MB  # what stayed resident after the release
    guard["rss"] = 940 * MB  # +4.4% over the new mark
    assert not memory.count_docs(100)
    guard["rss"] = 1000 * MB  # +11%
    guard["after_release"] = 990 * MB  # memory in use stays: the mark rises with it
    assert memory.count_docs(100)
    assert memory._mark == 990 * MB


def test_min_growth_applies_to_small_processes(guard) -> None:
    guard["rss"] = 200 * MB
    memory.count_docs(100)
    guard["rss"] = 250 * MB  # +25% but only 50 MB
    assert not memory.count_docs(100)
    guard["rss"] = 270 * MB  # +70 MB
    assert memory.count_docs(100)


def test_guard_off_and_fixed_interval(guard, monkeypatch) -> None:
    monkeypatch.setattr(memory, "RELEASE_ON_GROWTH", 0.0)
    memory.count_docs(100)
    guard["rss"] = 5000 * MB
    assert not memory.count_docs(100)
    assert guard["readings"] == 0
    monkeypatch.setattr(memory, "RELEASE_EVERY_DOCS", 150)
    assert memory.count_docs(100)  # 250 docs since the last release
    assert guard["released"] == [5000 * MB]


def test_not_glibc_never_releases(guard, monkeypatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    memory.count_docs(100)
    guard["rss"] = 5000 * MB
    assert not memory.count_docs(100)
    assert guard["readings"] == 0 and guard["released"] == []


@pytest.mark.parametrize("kwargs", [
    {"release_on_growth": -0.1}, {"release_on_growth": True}, {"release_on_growth": "5%"},
    {"min_growth_mb": -1}, {"check_every_docs": 0}, {"check_every_docs": 2.5},
])
def test_configure_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        memory.configure(**kwargs)


def test_configure_sets_the_guard(monkeypatch) -> None:
    for name in ("RELEASE_ON_GROWTH", "MIN_GROWTH_MB", "CHECK_EVERY_DOCS"):
        monkeypatch.setattr(memory, name, getattr(memory, name))
    memory.configure(release_on_growth=0.1, min_growth_mb=16, check_every_docs=32)
    assert (memory.RELEASE_ON_GROWTH, memory.MIN_GROWTH_MB, memory.CHECK_EVERY_DOCS) == (0.1, 16, 32)


def test_resident_bytes_reads_this_process() -> None:
    import os

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("no /proc")
    before = memory.resident_bytes()
    block = bytearray(64 * MB)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    after = memory.resident_bytes()
    assert before and after and after - before >= 60 * MB


def test_component_counts_every_doc(monkeypatch, tiny_bert) -> None:
    """nlp() counts one doc, nlp.pipe each batch's docs; annotations are
    those of a run that does not count."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": {"name": str(tiny_bert), "offramp_hidden": 8}})
    nlp.get_pipe("earlyexit_tagger").add_label("NOUN")
    nlp.get_pipe("earlyexit_tagger").add_label("VERB")
    nlp.initialize()
    texts = ["hello world", "the test text", "a long doc"]
    monkeypatch.setattr(memory, "RELEASE_ON_GROWTH", 0.0)
    expected = [[t.pos_ for t in doc] for doc in nlp.pipe(texts)]
    counted: List[int] = []
    monkeypatch.setattr(memory, "count_docs", lambda n: counted.append(n) or True)
    assert [t.pos_ for t in nlp(texts[0])] == expected[0]
    assert [[t.pos_ for t in doc] for doc in nlp.pipe(texts, batch_size=2)] == expected
    assert counted == [1, 2, 1]
