"""Fast Doc serialization: srsly's msgpack without a registry scan per call.

srsly (spaCy's serialization library) builds its msgpack encoder and decoder
chains for every object it packs or unpacks, and each time asks catalogue for
the registered functions. catalogue answers in two slow steps: it reads the
entry points of every installed package (importlib.metadata), then copies and
scans its whole global registry (every function spaCy, thinc and the other
loaded packages registered, several hundred once a pipeline is loaded). Both
cost grows with what is installed and loaded, and dwarfs packing a small doc.
`Doc.to_bytes` makes three calls for a doc whose `user_data` holds anything
(one for a doc without), and `Doc.from_bytes` as many, so a pipeline that
records anything on its docs (this one records exit layers) pays it whenever
docs cross processes: `nlp.pipe(..., n_process=N)` moves every doc twice,
DocBin and the Ray engine once.

`cache_msgpack_registries()` reads srsly's two msgpack registries' entry
points once, registers what they give, stops the per-call entry-point scan,
and answers their `get_all()` from a table that is read again whenever
catalogue's registry changed since (an entry added or removed, or one of the
table's functions replaced), so functions registered later
(`srsly.msgpack_encoders.register(...)`) are still used; only a package
installed while the process runs is not seen. Importing spacy_earlyexit calls
it, in the main process and in every n_process worker.
"""
from typing import Any, Callable, Dict, Iterable, List, Tuple

import catalogue


def cache_msgpack_registries() -> List[str]:
    """Scan the entry points of srsly's msgpack encoder and decoder registries
    once and answer their lookups from a table. Returns the names of the
    registries changed (none on a second call, or without srsly's registries)."""
    try:
        from srsly import msgpack
    except ImportError:
        return []
    registries = [getattr(msgpack, "msgpack_encoders", None), getattr(msgpack, "msgpack_decoders", None)]
    present = [registry for registry in registries if registry is not None]
    scanned = scan_entry_points_once(present)
    cached = cache_lookups(present)
    return sorted(set(scanned) | set(cached))


def scan_entry_points_once(registries: Iterable[Any]) -> List[str]:
    """For each catalogue registry that scans entry points on every lookup:
    register what its entry points give (without replacing a function
    registered under the same name) and stop the scans. Returns the changed
    registries' names."""
    changed = []
    for registry in registries:
        if registry is None or not getattr(registry, "entry_points", False):
            continue
        found = registry.get_entry_points()
        registry.entry_points = False
        known = registry.get_all()
        for name, function in found.items():
            if name not in known:
                registry.register(name, func=function)
        changed.append("/".join(registry.namespace))
    return changed


class CachedLookup:
    """`registry.get_all()` answered from a table, re-read when catalogue's
    global registry changed: its size differs, or a function of the table is
    no longer the one registered under its key. A registry that scans entry
    points again (`entry_points = True`) is answered by catalogue itself.
    The size, the table and its keys are replaced together (one attribute),
    so concurrent callers see one consistent state."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        #: (catalogue registry size, table, [(full key, function)])
        self.state: Tuple[int, Dict[str, Any], List[Tuple[Tuple[str, ...], Any]]] = (-1, {}, [])

    def __call__(self) -> Dict[str, Any]:
        if self.registry.entry_points:
            return type(self.registry).get_all(self.registry)
        registry = catalogue.REGISTRY
        size, table, keys = self.state
        if len(registry) != size or any(registry.get(key) is not value for key, value in keys):
            size = len(registry)
            table = type(self.registry).get_all(self.registry)
            namespace = tuple(self.registry.namespace)
            self.state = (size, table, [(namespace + (name,), value) for name, value in table.items()])
        return dict(table)


def cache_lookups(registries: Iterable[Any]) -> List[str]:
    """Give each registry a `CachedLookup` as its `get_all` (an instance
    attribute over the class's method). Returns the names of the registries
    changed; one already cached is left as it is."""
    changed = []
    for registry in registries:
        lookup: Callable[[], Dict[str, Any]] = registry.get_all
        if isinstance(lookup, CachedLookup):
            continue
        registry.get_all = CachedLookup(registry)
        changed.append("/".join(registry.namespace))
    return changed
