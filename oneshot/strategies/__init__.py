"""Search strategies behind one ask/tell interface; ``create(name, space, **hp)`` builds one by name."""

# importing a module registers its strategies
from . import advantage, darts, gdas, nasp, parsec, proxyless, random_search, reinforce, snas_relaxed  # noqa: F401
from .base import Sample, Strategy, ThetaStrategy, available, create, register

__all__ = ["Sample", "Strategy", "ThetaStrategy", "available", "create", "register"]
