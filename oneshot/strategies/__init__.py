"""Search strategies behind one ask/tell interface; ``create(name, space, **hp)`` builds one by name."""

from . import advantage, random_search, reinforce  # noqa: F401  (registers the strategies)
from .base import Sample, Strategy, ThetaStrategy, available, create, register

__all__ = ["Sample", "Strategy", "ThetaStrategy", "available", "create", "register"]
