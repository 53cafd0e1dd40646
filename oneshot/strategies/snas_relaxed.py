"""SNAS (Xie et al., ICLR 2019) as the AdvantageNAS code runs it (spec advantagenas.md §2, pitfall 6):
the relaxed Gumbel-softmax gates themselves, no resource penalty, no credit-assignment reformulation.

a = softmax((log(p + 0.001) + G) / τ), τ = (1 + cos(π n/N)) / 2; every op runs, mixed by a (dense), and θ's
gradient is dL/da pulled back through a by autograd. Weight steps (warm-up included, where τ = 1) are dense as
well, with a fresh relaxed sample at the current τ: in the official code ``draw()`` runs every iteration and
mode "S" is not in ``ONEHOTTER``, so edge.py computes and scales every op.

τ reaches 0 at the end of the schedule (division by zero), so it is clamped at ``tau_min`` = 0.01: at that
temperature a float32 softmax is already one-hot for typical score gaps (the relaxed gradient vanishes, as in the
code's last steps), and the clamp only acts in the last 6% of arch steps (cos²(πx/2) < 0.01 for x > 0.936).
"""

from __future__ import annotations

import math

import torch

from .base import Sample, ThetaStrategy, register
from .gumbel import gumbel_noise, perturbed_scores, relaxed_sample


def snas_temperature(progress: float, tau_min: float = 0.01) -> float:
    return max(tau_min, 0.5 * (1.0 + math.cos(math.pi * progress)))


@register("snas_relaxed", "SNAS as in the AdvantageNAS code: relaxed Gumbel-softmax gates, dense, autograd to θ")
class SNASRelaxed(ThetaStrategy):
    name = "snas_relaxed"

    def __init__(self, space, tau_min: float = 0.01, **kw):
        super().__init__(space, **kw)
        self.tau_min = tau_min

    def ask(self, phase: str) -> list[Sample]:
        noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
        # τ at n = arch steps done (the trainer calls set_schedule before ask)
        tau = snas_temperature(self.progress, self.tau_min)
        with torch.no_grad():
            gates = relaxed_sample(self.logits(), noise, tau)
            arch = tuple(perturbed_scores(self.logits(), noise).argmax(-1).tolist())
        return [Sample(gates, None, arch, info={"noise": noise, "tau": tau})]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, gate_grad in zip(samples, gate_grads):
            # θ has not moved since ask: the same gates, now with a graph
            a = relaxed_sample(self.logits(), sample.info["noise"], sample.info["tau"])
            (grad,) = torch.autograd.grad(a, self.theta, gate_grad.to(self.device))
            self.apply_gradient(grad)
