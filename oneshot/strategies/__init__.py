"""Search strategies behind one ask/tell interface; ``create(name, space, **hp)`` builds one by name."""

# importing a module registers its strategies
from . import (abs_uniform, advantage, asng, darts, gdas, nasp, parsec, proxyless, random_search, reinforce,  # noqa: F401
               snas, snas_relaxed)
from .base import (Sample, Strategy, ThetaStrategy, available, coerce_hyperparameters, create, hyperparameters,
                   register)

__all__ = ["Sample", "Strategy", "ThetaStrategy", "available", "create", "hyperparameters", "coerce_hyperparameters",
           "register"]
