"""NASP (Yao et al., AAAI 2020) as the AdvantageNAS code runs it (spec advantagenas.md §2).

θ is kept in a box by a per-row projection (if min < 0 subtract the min, then if max > 1 divide by the max).
Arch steps: a = onehot(argmax θ); every op runs, weighted by a (dense), so dL/da exists for all K ops, and
θ.grad = dL/da; Adam; project again. Weight steps run the argmax op only; during warm-up the op is sampled from
softmax(θ) instead (Gumbel-argmax on log(p + 0.001), as the official code).
"""

from __future__ import annotations

import math

import torch

from .base import Sample, ThetaStrategy, register
from .gumbel import gumbel_noise, perturbed_scores


def project(theta: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: subtract the min if it is negative, then divide by the max if it exceeds 1 (valid entries)."""
    if mask is None:
        mask = torch.ones_like(theta, dtype=torch.bool)
    low = theta.masked_fill(~mask, math.inf).min(-1, keepdim=True).values.clamp(max=0.0)
    theta = theta - low
    high = theta.masked_fill(~mask, -math.inf).max(-1, keepdim=True).values.clamp(min=1.0)
    return theta / high


@register("nasp", "NASP: proximal one-hot architecture, dense arch steps, sparse weight steps (Yao et al. 2020)")
class NASP(ThetaStrategy):
    name = "nasp"

    def __init__(self, space, **kw):
        super().__init__(space, **kw)
        self._project()  # the code projects before every draw; θ only changes in tell, so once here suffices

    def _project(self):
        with torch.no_grad():
            self.theta.copy_(project(self.theta, self.mask))

    def ask(self, phase: str) -> list[Sample]:
        if phase == "warmup":
            noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
            with torch.no_grad():
                return [self.one_hot_sample(perturbed_scores(self.logits(), noise).argmax(-1).tolist())]
        sample = self.one_hot_sample(self.derive())
        if phase == "arch":  # all ops run, weighted by the one-hot: dL/da for every op
            sample.active, sample.unit = None, False
        return [sample]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for gate_grad in gate_grads:
            self.apply_gradient(gate_grad.to(self.device))
            self._project()
