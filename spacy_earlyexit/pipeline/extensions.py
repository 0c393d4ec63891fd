"""Custom attributes: Token._.exit_layer, Doc._.exit_layers, Doc._.early_exit.

Values live in doc.user_data, so they survive doc.to_bytes(),
DocBin(store_user_data=True) and nlp.pipe(..., n_process=2).
"""
from typing import Any, Dict, List, Optional

from spacy.attrs import IDX
from spacy.tokens import Doc, Token


def _doc_exit_layers(doc: Doc) -> List[Optional[int]]:
    return [token._.exit_layer for token in doc]


def register_extensions() -> None:
    """Register the attributes once (safe to call again)."""
    if not Token.has_extension("exit_layer"):
        Token.set_extension("exit_layer", default=None)
    if not Doc.has_extension("exit_layers"):
        Doc.set_extension("exit_layers", getter=_doc_exit_layers)
    if not Doc.has_extension("early_exit"):
        Doc.set_extension("early_exit", default=None)


def set_exit_layers(doc: Doc, exit_layers: List[int]) -> None:
    """Set Token._.exit_layer on every token of `doc` at once.

    Writes the user_data entries that `token._.exit_layer = value` writes
    (spaCy keys a token's extension values by its character offset), without
    creating a Token object per token.
    """
    if len(exit_layers) != len(doc):
        raise ValueError(f"{len(exit_layers)} exit layers for a doc of {len(doc)} tokens")
    user_data = doc.user_data
    for char_offset, layer in zip(doc.to_array(IDX).tolist(), exit_layers):
        user_data[("._.", "exit_layer", char_offset, None)] = layer


def exit_summary(
    exit_layers: List[int], cost: float, full_cost: float, int8_cost: Optional[float] = None
) -> Dict[str, Any]:
    """Doc._.early_exit: mean exit layer and analytic speed-up of one doc.

    cost, full_cost: multiply-adds with early exit and at full depth.
    int8_cost (int8 pipelines): the part of `cost` that ran in int8, given
    as "int8_flops" (the float32 part is "flops" minus it).
    """
    summary = {
        "exit_layer_mean": sum(exit_layers) / len(exit_layers) if exit_layers else 0.0,
        "flops": cost,
        "flops_full": full_cost,
        "flops_speedup": full_cost / cost if cost > 0 else 1.0,
    }
    if int8_cost is not None:
        summary["int8_flops"] = int8_cost
    return summary
