"""Importing the package stops srsly's per-call entry-point scan (what made
Doc.to_bytes slow for docs with user_data), without losing any encoder."""
import catalogue
import numpy
import srsly
from spacy.tokens import Doc
from spacy.vocab import Vocab
from srsly import msgpack

import spacy_earlyexit  # noqa: F401 (the import applies it)
from spacy_earlyexit.pipeline.extensions import set_exit_layers
from spacy_earlyexit.pipeline.msgpack_speed import scan_entry_points_once, scan_msgpack_entry_points_once


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_doc_serialization_scans_no_entry_points(monkeypatch):
    scans = []
    for registry in (msgpack.msgpack_encoders, msgpack.msgpack_decoders):
        monkeypatch.setattr(registry, "get_entry_points", lambda: scans.append(1) or {})
    doc = Doc(Vocab(), words=["Alice", "lives", "in", "Paris"])
    set_exit_layers(doc, [1, 2, 3, 1])
    doc._.early_exit = {"exit_layer_mean": 1.75}
    restored = Doc(Vocab()).from_bytes(doc.to_bytes())
    assert restored._.exit_layers == [1, 2, 3, 1] and restored._.early_exit == {"exit_layer_mean": 1.75}
    assert scans == []
    assert scan_msgpack_entry_points_once() == []  # a second call changes nothing


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
