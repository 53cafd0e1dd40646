"""Search spaces by name: ``create_space("nb201", ops=5)``."""

from __future__ import annotations

from ..errors import UserError
from .base import Architecture, Categorical, Integer, SearchSpace
from .enas_micro import EnasMicroSpace
from .nb201 import OPS_4, OPS_5, NB201Space


def _nb201(ops: int = 4) -> NB201Space:
    if ops not in (4, 5):
        raise UserError(f"nb201: ops must be 4 (without 'none') or 5 (with 'none'), got {ops}")
    return NB201Space(OPS_4 if ops == 4 else OPS_5)


SPACES = {
    "nb201": (_nb201, "NAS-Bench-201 cell: 6 edges x {skip, conv1x1, conv3x3, avgpool3x3} (ops=5 adds 'none')"),
    "enas_micro": (EnasMicroSpace, "ENAS micro cells (ASNG-NAS): 2 cell types x 5 nodes x (2 inputs, 2 of 5 ops); "
                                   "single-path strategies only (asng, random, reinforce); no retraining yet"),
}


def create_space(name: str, **options) -> SearchSpace:
    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; choose from {', '.join(SPACES)} (list them with 'oneshot spaces')")
    return SPACES[name][0](**options)


__all__ = ["Architecture", "Categorical", "Integer", "SearchSpace", "NB201Space", "EnasMicroSpace", "SPACES",
           "create_space"]
