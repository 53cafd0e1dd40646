"""Random search with weight sharing (SPOS-style): train the supernet on uniformly sampled children, then
pick the child with the best validation accuracy among ``candidates`` uniformly sampled ones."""

from __future__ import annotations

from .base import Sample, Strategy, register


@register("random", "uniform single-path sampling (SPOS); best of K sampled children on validation data")
class RandomSearch(Strategy):
    name = "random"
    updates_theta = False

    def __init__(self, space, candidates: int = 100, **kw):
        super().__init__(space, **kw)
        self.derive_by_validation = candidates

    def ask(self, phase: str) -> list[Sample]:
        return [self.one_hot_sample(self.space.sample(self.generator))]

    def derive(self):
        raise RuntimeError("random search derives by validation: the trainer ranks sampled children")
