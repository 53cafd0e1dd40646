"""AdvantageNAS (Sato et al., AAAI 2021): REINFORCE with a per-edge advantage from one backward pass.

Only the sampled op runs on each edge, scaled by its gate a_ik = 1. Then d_i = dL/da_ik = <dL/de_i, o_ik(x)>
is the first-order estimate of L(a) - L(a with edge i cut), the advantage of edge i's choice, and the
θ-gradient is d_i (a_i - p_i). Spec: advantagenas.md §1.
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register

EMA = 0.05


def advantage_gradient(probs: torch.Tensor, one_hot: torch.Tensor, gate_grad: torch.Tensor,
                       baseline: torch.Tensor | None = None) -> torch.Tensor:
    """ĝ_i = (d_i - b_i)(a_i - p_i) with d_i = <a_i, dL/da_i>, per row i."""
    d = (one_hot * gate_grad).sum(-1, keepdim=True)
    if baseline is not None:
        d = d - baseline
    return d * (one_hot - probs)


def none_advantage(gate_grad: torch.Tensor, one_hot: torch.Tensor, memory: torch.Tensor | None,
                   none_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official code's 'none' rule: a sampled 'none' gets the worst advantage seen on its edge.

    'none' outputs zeros, so its own d is exactly 0 and would never be pushed down. ``memory`` is an EMA of d
    per (edge, op), updated at the sampled entries only (the first call stores the raw gradient).
    Returns (gate gradient with the 'none' column replaced, new memory).
    """
    if memory is None:
        memory = gate_grad.clone()
    else:
        memory = torch.where(one_hot.bool(), EMA * gate_grad + (1 - EMA) * memory, memory)
    gate_grad = gate_grad.clone()
    gate_grad[:, none_index] = memory.max(-1).values
    return gate_grad, memory


@register("advantage", "AdvantageNAS: sparse propagation, per-edge credit from dL/dgate (Sato et al. 2021)")
@register("advantage_wb", "AdvantageNAS with a per-edge EMA baseline ('AdvantageNAS/w-b')", baseline=True)
class AdvantageNAS(ThetaStrategy):
    name = "advantage"

    def __init__(self, space, baseline: bool = False, none_rule: bool = True, **kw):
        super().__init__(space, **kw)
        self.use_baseline = baseline
        self.baseline: torch.Tensor | None = None
        choices = space.decisions[0].choices
        same_ops = all(d.choices == choices for d in space.decisions)
        self.none_index = choices.index("none") if none_rule and same_ops and "none" in choices else None
        self.memory: torch.Tensor | None = None

    def ask(self, phase: str) -> list[Sample]:
        return [self.one_hot_sample(self.sample_from(self.probabilities()))]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, gate_grad in zip(samples, gate_grads):
            self.update(sample, gate_grad)

    def update(self, sample: Sample, gate_grad: torch.Tensor) -> None:
        probs, gate_grad = self.probabilities(), gate_grad.to(self.device)
        if self.none_index is not None:
            gate_grad, self.memory = none_advantage(gate_grad, sample.gates, self.memory, self.none_index)
        baseline = None
        if self.use_baseline:
            d = (sample.gates * gate_grad).sum(-1, keepdim=True)
            baseline = torch.zeros_like(d) if self.baseline is None else self.baseline
            self.baseline = d if self.baseline is None else EMA * d + (1 - EMA) * self.baseline
        self.apply_gradient(advantage_gradient(probs, sample.gates, gate_grad, baseline))

    def state_dict(self):
        return {**super().state_dict(), "baseline": self.baseline, "memory": self.memory}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.baseline, self.memory = state["baseline"], state["memory"]
