"""Search spaces by name: ``create_space("nb201", ops=5)``."""

from __future__ import annotations

from ..errors import UserError
from .base import Architecture, Categorical, Integer, SearchSpace
from .enas_micro import EnasMicroSpace
from .nb201 import OPS_4, OPS_5, NB201Space
from .darts import DARTSSpace
from .rnn import RNNSpace


def _nb201(ops: int = 4) -> NB201Space:
    if ops not in (4, 5):
        raise UserError(f"nb201: ops must be 4 (without 'none') or 5 (with 'none'), got {ops}")
    return NB201Space(OPS_4 if ops == 4 else OPS_5)


SPACES = {
    "nb201": (_nb201, "NAS-Bench-201 cell: 6 edges x {skip, conv1x1, conv3x3, avgpool3x3} (ops=5 adds 'none')"),
    "enas_micro": (EnasMicroSpace, "ENAS micro cells (ASNG-NAS): 2 cell types x 5 nodes x (2 inputs, 2 of 5 ops); "
                                   "single-path strategies only (asng, random, reinforce); 'oneshot retrain' trains "
                                   "the result"),
    "darts": (DARTSSpace, "DARTS CNN cells (SNAS, DARTS): normal + reduce cell, 14 edges x 8 ops each ('none' = no "
                          "edge); genotype text or a released name (snas_mild, snas_moderate, snas_aggressive, "
                          "darts_v1, darts_v2); space options cells (search depth, 8), drop_path (SNAS: 0.3)"),
    "rnn": (RNNSpace, "DARTS-style recurrent highway cell (AdvantageNAS PTB): 3 nodes, 6 edges x {identity, tanh, "
                      "sigmoid, relu, none} (ops=4 drops 'none'); use with --task ptb"),
}


def register(name: str, description: str):
    """Decorator for a SearchSpace class or factory: ``create_space(name, **options)`` builds it, and the CLI
    lists and searches it (``oneshot search --space name``)."""

    def wrap(factory):
        SPACES[name] = (factory, description)
        return factory

    return wrap


def create_space(name: str, **options) -> SearchSpace:
    from .. import plugins

    plugins.load()
    if name not in SPACES:
        raise UserError(f"unknown space {name!r}; choose from {', '.join(SPACES)} (list them with 'oneshot spaces')")
    factory = SPACES[name][0]
    try:
        import inspect

        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise UserError(f"space {name!r}: bad --space-option ({e})") from None
    return factory(**options)


__all__ = ["Architecture", "Categorical", "Integer", "SearchSpace", "NB201Space", "EnasMicroSpace", "DARTSSpace", "RNNSpace", "SPACES",
           "create_space", "register"]
