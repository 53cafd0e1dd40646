"""DARTS (Liu et al., ICLR 2019), first order, as the AdvantageNAS code runs it (spec advantagenas.md §2).

a = softmax(θ); every op runs, mixed by a (dense propagation), in weight steps (warm-up included) and arch steps
alike. Arch steps take dL/da on a validation batch and pull it back through the softmax by autograd: no
unrolled second-order term. Nothing is random, so the generator is never used.
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register


@register("darts", "DARTS (first order): softmax-mixed dense supernet, gradient of the val loss to θ (Liu et al. 2019)")
class DARTS(ThetaStrategy):
    name = "darts"

    def ask(self, phase: str) -> list[Sample]:
        gates = self.probabilities()
        return [Sample(gates, None, tuple(gates.argmax(-1).tolist()))]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for gate_grad in gate_grads:
            # θ has not moved since ask, so softmax(θ) rebuilt here is the gate the trainer differentiated
            (grad,) = torch.autograd.grad(torch.softmax(self.logits(), -1), self.theta, gate_grad.to(self.device))
            self.apply_gradient(grad)
