"""Fast Doc serialization: srsly's msgpack without an entry-point scan per call.

srsly (spaCy's serialization library) builds its msgpack encoder and decoder
chains for every object it packs or unpacks, and each time asks catalogue for
the registered functions, which scans the entry points of every installed
package (importlib.metadata): a cost per call that grows with the number of
installed packages and dwarfs packing a small doc. `Doc.to_bytes` makes three
calls for a doc whose `user_data` holds anything (one for a doc without), and
`Doc.from_bytes` as many, so a pipeline that records anything on its docs
(this one records exit layers) pays it whenever docs cross processes:
`nlp.pipe(..., n_process=N)` moves every doc twice, DocBin and the Ray
engine once.

`scan_msgpack_entry_points_once()` reads srsly's two msgpack registries'
entry points once, registers what they give, and stops the per-call scan.
Functions registered later (`srsly.msgpack_encoders.register(...)`) are still
used; only a package installed while the process runs is not seen. Importing
spacy_earlyexit calls it, in the main process and in every n_process worker.
"""
from typing import Any, Iterable, List


def scan_msgpack_entry_points_once() -> List[str]:
    """Register the entry points of srsly's msgpack encoder and decoder
    registries and stop scanning them per call; returns the names of the
    registries changed (none on a second call, or without srsly's registries)."""
    try:
        from srsly import msgpack
    except ImportError:
        return []
    return scan_entry_points_once(
        [getattr(msgpack, "msgpack_encoders", None), getattr(msgpack, "msgpack_decoders", None)]
    )


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
