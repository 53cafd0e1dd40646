"""The NAS-Bench-201 table: CIFAR-10/100 and ImageNet16-120 test accuracy (200 epochs, mean over seeds)
of all 15,625 cells, shipped gzip-compressed inside the package (about 0.4 MB, loads in well under a second).

Isomorphic cells (those that differ only on edges whose output is cut off by ``none``) were trained
separately in NB201 and keep their own rows; ``lookup`` also reports how many rows share the cell's
canonical ``unique`` form, so that users can tell.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from ..errors import UserError

DATASETS = ("cifar10", "cifar100", "imagenet16")
_COLUMNS = ("CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs")


@dataclass(frozen=True)
class NB201Table:
    strings: tuple[str, ...]
    unique: tuple[str, ...]
    accuracy: np.ndarray  # (15625, 3): cifar10, cifar100, imagenet16
    index: dict[str, int]
    isomorph_count: dict[str, int]  # rows per unique (canonical) cell, counted once at load

    def lookup(self, arch_string: str) -> dict:
        """Test accuracies and CIFAR-10 rank (1 = best of 15,625) of one cell."""
        i = self.index.get(arch_string.strip())
        if i is None:
            raise UserError(f"nb201: {arch_string!r} is not in the NB201 table; print a valid one with "
                            "'oneshot evaluate --space nb201 --example'")
        acc = self.accuracy[i]
        result = {name: float(acc[j]) for j, name in enumerate(DATASETS)}
        for j, name in enumerate(DATASETS):
            result[f"{name}_rank"] = int((self.accuracy[:, j] > acc[j]).sum()) + 1
        result["isomorphs"] = self.isomorph_count[self.unique[i]]
        result["architecture"] = self.strings[i]
        return result

    def best(self, dataset: str = "cifar10") -> tuple[str, float]:
        j = DATASETS.index(dataset)
        i = int(self.accuracy[:, j].argmax())
        return self.strings[i], float(self.accuracy[i, j])


@lru_cache(maxsize=None)
def load_table(path: str | None = None) -> NB201Table:
    """The shipped table, or a CSV / CSV.GZ in the same format at ``path`` (or $ONESHOT_NB201)."""
    path = path or os.environ.get("ONESHOT_NB201")
    if path is None:
        handle = gzip.open(resources.files(__package__).joinpath("nb201.csv.gz").open("rb"), "rt")
    elif not os.path.exists(path):
        raise UserError(f"nb201: table {path!r} does not exist; unset ONESHOT_NB201 to use the shipped table")
    else:
        handle = gzip.open(path, "rt") if path.endswith(".gz") else open(path, newline="")
    with handle:
        rows = list(csv.DictReader(handle))
    try:
        accuracy = np.array([[float(r[c]) for c in _COLUMNS] for r in rows], dtype=np.float64)
        strings = tuple(r["ArchitectureString"] for r in rows)
        unique = tuple(r.get("UniqueString", s) for r, s in zip(rows, strings))
    except (KeyError, ValueError) as e:
        raise UserError(f"nb201: table {path!r} lacks the NB201 columns ({e}); pass the NB201 accuracy CSV") from None
    return NB201Table(strings, unique, accuracy, {s: i for i, s in enumerate(strings)}, dict(Counter(unique)))


def lookup(arch_string: str) -> dict:
    return load_table().lookup(arch_string)
