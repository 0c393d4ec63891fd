"""From a doc's predicted class indices to the classes its tokens get.

Pure logic shared by annotation and per-layer scoring: a token with an
output of its own gets its class; a token without one takes its lender's
(the nearest neighbour with an output) when the task borrows classes, the
task's whitespace class when it is whitespace, or nothing.
"""
from typing import List, Optional, Sequence

import numpy

from ..layers.token_mapping import lender_index
from .tasks import Task


def token_classes(
    task: Task,
    doc_tokens_are_space: Sequence[bool],
    labels: numpy.ndarray,
    own: numpy.ndarray,
    classes: Sequence[str],
    lenders: Optional[numpy.ndarray] = None,
) -> List[Optional[str]]:
    """The class of every token of a doc, borrowed classes joined by the task.

    doc_tokens_are_space: [n_tokens] token.is_space; labels: [n_tokens] class
    index (-1: no token of the doc has a word piece); own: [n_tokens] bool,
    the token has its own output; lenders: [n_tokens] int, the token each
    token took its output from (computed from `own` when not given).
    """
    values: List[Optional[str]] = []
    if lenders is None:
        lenders = lender_index(numpy.asarray(own, dtype=bool))
    copied: List[int] = []  # per token: the token whose class it copied, or -1
    for is_space, label, has_own, lender in zip(doc_tokens_are_space, labels.tolist(), own.tolist(),
                                                numpy.asarray(lenders).tolist()):
        if not has_own and is_space and task.whitespace_class is not None:
            values.append(task.whitespace_class)
        elif label < 0:  # no token of the doc has a word piece
            unknown = task.unknown_class if not is_space else None
            values.append(unknown or task.whitespace_class)
        elif not has_own and not task.borrow_classes:
            values.append(None)
        else:
            values.append(classes[label])
            copied.append(-1 if has_own else lender)
            continue
        copied.append(-1)
    return task.join_borrowed(values, copied)
