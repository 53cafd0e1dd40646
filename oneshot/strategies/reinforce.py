"""REINFORCE with an EMA loss baseline: every edge gets the same reward L - b (spec advantagenas.md §2).

As in the official code the baseline is updated with the current loss *before* the reward is formed, and at
every iteration (warm-up and weight steps too), so r = (1 - 0.05)(L - b_prev) (pitfall 5).
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register

EMA = 0.05


def reinforce_gradient(probs: torch.Tensor, one_hot: torch.Tensor, reward: float) -> torch.Tensor:
    """ĝ_i = r (a_i - p_i): the score function of each row times one shared reward."""
    return reward * (one_hot - probs)


@register("reinforce", "REINFORCE with an EMA loss baseline (sparse propagation, no gate gradients)")
class Reinforce(ThetaStrategy):
    paper_derivation = "best_sampled"  # AdvantageNAS code, PTB mode lists (spec §3): R and GD report PB
    name = "reinforce"
    needs_gate_grad = False

    def __init__(self, space, **kw):
        super().__init__(space, **kw)
        self.baseline: float | None = None

    def ask(self, phase: str) -> list[Sample]:
        return [self.one_hot_sample(self.sample_from(self.probabilities()))]

    def tell(self, samples, losses, gate_grads, phase):
        for sample, loss in zip(samples, losses):
            self.baseline = loss if self.baseline is None else EMA * loss + (1 - EMA) * self.baseline
            if phase == "arch":
                self.apply_gradient(reinforce_gradient(self.probabilities(), sample.gates, loss - self.baseline))

    def state_dict(self):
        return {**super().state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.baseline = state["baseline"]
