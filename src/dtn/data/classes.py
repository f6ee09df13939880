"""Class subsets: keep only some classes of a split and renumber them 0..k-1 in the order asked.

    select_classes(split, parse_classes("trouser,pullover"))   # Trouser -> 0, Pullover -> 1

A replication of the clothing experiment used two classes; applying the same names to the source
(clothing photos) and the target (Fashion-MNIST) keeps both label spaces identical, because a name
is matched against each split's own class_names. Names match case-insensitively, as the whole class
name or one of its '/'-separated parts ("t-shirt" or "top" for "T-shirt/top"); a number is a class index.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Split


def parse_classes(text: str) -> tuple[str, ...]:
    """"trouser, pullover" -> ("trouser", "pullover"); "" -> () (all classes)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(set(n.casefold() for n in names)) != len(names):
        raise DataError(f"classes {text!r}: a class is listed twice")
    return names


def _aliases(class_name: str) -> set[str]:
    name = class_name.casefold()
    return {name, *(part.strip() for part in name.split("/") if part.strip())}


def class_index(split: Split, name: str) -> int:
    """The index in split.class_names that `name` means (a number is an index)."""
    if name.isdigit() and (not split.class_names or int(name) < len(split.class_names)):
        return int(name)
    hits = [i for i, c in enumerate(split.class_names) if name.casefold() in _aliases(c)]
    if len(hits) != 1:
        known = ", ".join(split.class_names) or "none (this dataset has no class names; use indices)"
        why = "matches several classes" if hits else "is not a class"
        raise DataError(f"{split.dataset}: {name!r} {why}; classes: {known}")
    return hits[0]


def select_classes(split: Split, names: tuple[str, ...]) -> Split:
    """The rows of `split` whose class is among `names`, relabelled by position in `names`."""
    if not names:
        return split
    wanted = [class_index(split, n) for n in names]
    labels = np.asarray(split.labels)
    keep = np.flatnonzero(np.isin(labels, wanted))
    if len(keep) == 0:
        raise DataError(f"{split.dataset}/{split.split}: no images of the classes {', '.join(names)}")
    remap = np.full(max(int(labels.max()), max(wanted)) + 1, -1, np.int64)
    remap[wanted] = np.arange(len(wanted))
    class_names = tuple(split.class_names[i] if i < len(split.class_names) else str(i) for i in wanted)
    extras = {k: _take(v, keep, len(labels)) for k, v in split.extras.items()}
    return Split(np.asarray(split.images[keep]), remap[labels[keep]], split.dataset, split.split, class_names,
                 {**extras, "classes_selected": names})


def _take(value, keep: np.ndarray, n: int):
    """Per-row extras (arrays or lists as long as the split) follow the kept rows; the rest are kept as they are."""
    if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
        return value[keep]
    if isinstance(value, list) and len(value) == n:
        return [value[i] for i in keep]
    return value
