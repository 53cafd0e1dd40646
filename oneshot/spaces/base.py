"""Search spaces: an ordered list of decisions, and architectures as tuples of choices.

An architecture is a plain tuple with one entry per decision: the *index* of the chosen option for a
`Categorical`, the integer value itself for an `Integer`. Tuples hash, compare and serialise for free; a
space turns them into its canonical string (NB201: ``|nor_conv_3x3~0|+|...|``) and back.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..errors import UserError

Architecture = tuple[int, ...]


@dataclass(frozen=True)
class Categorical:
    """Pick one of ``choices`` (e.g. the operation on one edge)."""

    name: str
    choices: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.choices)

    def values(self) -> range:
        return range(len(self.choices))


@dataclass(frozen=True)
class Integer:
    """Pick an integer in ``[low, high]`` (ordinal: a channel count, a kernel size, a depth)."""

    name: str
    low: int
    high: int

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def values(self) -> range:
        return range(self.low, self.high + 1)


Decision = Categorical | Integer


class SearchSpace:
    """An ordered list of decisions. Subclasses add a canonical string format and the networks."""

    name = "generic"

    def __init__(self, decisions: Sequence[Decision]):
        if not decisions:
            raise ValueError("a search space needs at least one decision")
        names = [d.name for d in decisions]
        if len(set(names)) != len(names):
            raise ValueError(f"decision names must be unique, got {names}")
        self.decisions: tuple[Decision, ...] = tuple(decisions)

    # -- size and enumeration -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.decisions)

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(d.size for d in self.decisions)

    def enumerate(self) -> Iterator[Architecture]:
        """All architectures, in lexicographic order of the decisions (small spaces only)."""
        return itertools.product(*(d.values() for d in self.decisions))

    @property
    def categorical(self) -> bool:
        return all(isinstance(d, Categorical) for d in self.decisions)

    @property
    def max_choices(self) -> int:
        return max(d.size for d in self.decisions)

    def choice_mask(self) -> torch.Tensor:
        """Bool (decisions x max_choices): which entries of a padded logit matrix are real choices.

        Restricted spaces may keep different numbers of choices per decision; strategies hold one padded
        matrix and mask the rest, so their code never sees ragged rows.
        """
        mask = torch.zeros(len(self.decisions), self.max_choices, dtype=torch.bool)
        for i, d in enumerate(self.decisions):
            mask[i, : d.size] = True
        return mask

    def sample(self, generator: torch.Generator | None = None) -> Architecture:
        """A uniformly random architecture."""
        return tuple(
            int(d.values()[int(torch.randint(d.size, (1,), generator=generator))]) for d in self.decisions
        )

    # -- strings --------------------------------------------------------------------------------
    def check(self, arch: Sequence[int]) -> Architecture:
        arch = tuple(int(v) for v in arch)
        if len(arch) != len(self.decisions):
            raise UserError(f"{self.name}: an architecture needs {len(self.decisions)} values, got {len(arch)}")
        for v, d in zip(arch, self.decisions):
            if v not in d.values():
                raise UserError(f"{self.name}: value {v} is out of range for decision {d.name!r}")
        return arch

    def to_string(self, arch: Sequence[int]) -> str:
        arch = self.check(arch)
        parts = []
        for v, d in zip(arch, self.decisions):
            parts.append(f"{d.name}={d.choices[v] if isinstance(d, Categorical) else v}")
        return ",".join(parts)

    def from_string(self, text: str) -> Architecture:
        values = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
        arch = []
        for d in self.decisions:
            if d.name not in values:
                raise UserError(f"{self.name}: architecture string lacks {d.name!r}; expected e.g. "
                                f"{self.to_string(self.sample())!r}")
            raw = values[d.name]
            if isinstance(d, Categorical):
                if raw not in d.choices:
                    raise UserError(f"{self.name}: {raw!r} is not a choice of {d.name!r} ({', '.join(d.choices)})")
                arch.append(d.choices.index(raw))
            else:
                try:
                    arch.append(int(raw))
                except ValueError:
                    raise UserError(f"{self.name}: {d.name!r} needs an integer, got {raw!r}") from None
        return self.check(arch)

    # -- restriction ----------------------------------------------------------------------------
    def restrict(self, keep: dict[str, Sequence[str]]) -> "SearchSpace":
        """A smaller space: for each named categorical decision, only the listed choices survive.

        Choice order is preserved, so a restricted space's supernet keeps the same op order.
        """
        decisions = []
        for d in self.decisions:
            if d.name in keep and isinstance(d, Categorical):
                kept = [c for c in d.choices if c in set(keep[d.name])]
                unknown = set(keep[d.name]) - set(d.choices)
                if unknown:
                    raise UserError(f"{self.name}: {sorted(unknown)} are not choices of {d.name!r}")
                if not kept:
                    raise UserError(f"{self.name}: restricting {d.name!r} would leave no choice")
                d = Categorical(d.name, tuple(kept))
            decisions.append(d)
        return self._rebuild(decisions)

    def _rebuild(self, decisions: Sequence[Decision]) -> "SearchSpace":
        return SearchSpace(decisions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.decisions)} decisions, {self.size} architectures)"
