"""Importing the package stops srsly's per-call registry scans (what made
Doc.to_bytes slow for docs with user_data), without losing any encoder."""
import catalogue
import numpy
import srsly
from spacy.tokens import Doc
from spacy.vocab import Vocab
from srsly import msgpack

import spacy_earlyexit  # noqa: F401 (the import applies it)
from spacy_earlyexit.pipeline.extensions import set_exit_layers
from spacy_earlyexit.pipeline.msgpack_speed import (
    CachedLookup,
    cache_lookups,
    cache_msgpack_registries,
    scan_entry_points_once,
)


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_doc_serialization_scans_no_entry_points_and_no_registry(monkeypatch):
    scans = []
    for registry in (msgpack.msgpack_encoders, msgpack.msgpack_decoders):
        monkeypatch.setattr(registry, "get_entry_points", lambda: scans.append(1) or {})
        assert isinstance(registry.get_all, CachedLookup)
    srsly.msgpack_loads(srsly.msgpack_dumps({"warm": 1}))  # fills the tables
    copies = []  # catalogue's own get_all copies and scans its whole registry
    real_get_all = catalogue.Registry.get_all

    def counting_get_all(self):
        if self.namespace[0] == "srsly":
            copies.append(self.namespace)
        return real_get_all(self)

    monkeypatch.setattr(catalogue.Registry, "get_all", counting_get_all)
    doc = Doc(Vocab(), words=["Alice", "lives", "in", "Paris"])
    set_exit_layers(doc, [1, 2, 3, 1])
    doc._.early_exit = {"exit_layer_mean": 1.75}
    restored = Doc(Vocab()).from_bytes(doc.to_bytes())
    assert restored._.exit_layers == [1, 2, 3, 1] and restored._.early_exit == {"exit_layer_mean": 1.75}
    assert scans == [] and copies == []
    assert cache_msgpack_registries() == []  # a second call changes nothing


def test_numpy_and_later_registrations_still_work():
    array = numpy.arange(6, dtype="float32").reshape(2, 3)
    assert numpy.array_equal(srsly.msgpack_loads(srsly.msgpack_dumps({"a": array}))["a"], array)

    def encode(obj, chain=None):
        return {"__point__": obj.x} if isinstance(obj, Point) else (chain(obj) if chain else obj)

    def decode(obj, chain=None):
        return Point(obj["__point__"]) if "__point__" in obj else (chain(obj) if chain else obj)

    msgpack.msgpack_encoders.register("test_point", func=encode)
    msgpack.msgpack_decoders.register("test_point", func=decode)
    try:
        assert srsly.msgpack_loads(srsly.msgpack_dumps(Point(7))).x == 7
    finally:
        catalogue._remove(("srsly", "msgpack_encoders", "test_point"))
        catalogue._remove(("srsly", "msgpack_decoders", "test_point"))


def test_entry_points_found_before_the_freeze_are_kept(monkeypatch):
    registry = catalogue.create("spacy_earlyexit_test", "things", entry_points=True)
    found = lambda: "from an entry point"  # noqa: E731
    mine = lambda: "registered"  # noqa: E731
    registry.register("mine", func=mine)
    monkeypatch.setattr(registry, "get_entry_points", lambda: {"found": found, "mine": lambda: "shadowed"})
    try:
        assert scan_entry_points_once([registry]) == ["spacy_earlyexit_test/things"]
        assert registry.entry_points is False
        assert registry.get_all() == {"mine": mine, "found": found}
        assert scan_entry_points_once([registry]) == []
    finally:
        catalogue._remove(("spacy_earlyexit_test", "things", "mine"))
        catalogue._remove(("spacy_earlyexit_test", "things", "found"))


def reference_get_all(namespace):
    """catalogue's answer computed here: every registered function one level
    below the namespace."""
    return {keys[-1]: value for keys, value in catalogue.REGISTRY.items() if keys[:-1] == tuple(namespace)}


def test_cached_lookup_follows_additions_replacements_and_removals():
    registry = catalogue.create("spacy_earlyexit_test", "cached", entry_points=False)
    first = lambda: 1  # noqa: E731
    second = lambda: 2  # noqa: E731
    third = lambda: 3  # noqa: E731
    try:
        registry.register("first", func=first)
        assert cache_lookups([registry]) == ["spacy_earlyexit_test/cached"]
        assert cache_lookups([registry]) == []
        assert registry.get_all() == reference_get_all(registry.namespace) == {"first": first}
        registry.register("second", func=second)
        assert registry.get_all() == reference_get_all(registry.namespace) == {"first": first, "second": second}
        registry.register("first", func=third)  # replaced: the registry's size is unchanged
        assert registry.get_all() == reference_get_all(registry.namespace) == {"first": third, "second": second}
        catalogue._remove(("spacy_earlyexit_test", "cached", "second"))
        assert registry.get_all() == reference_get_all(registry.namespace) == {"first": third}
        answer = registry.get_all()
        answer["intruder"] = second  # callers get a copy
        assert registry.get_all() == {"first": third}
        registry.entry_points = True  # scanning again: catalogue answers
        assert registry.get_all() == {"first": third}
    finally:
        for name in ("first", "second"):
            if catalogue.check_exists("spacy_earlyexit_test", "cached", name):
                catalogue._remove(("spacy_earlyexit_test", "cached", name))
