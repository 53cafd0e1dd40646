"""GDAS (Dong & Yang, CVPR 2019) as the AdvantageNAS code runs it (spec advantagenas.md §2).

z = softmax((log(p + 0.001) + G) / τ) with Gumbel noise G and τ = 10 - 9.9 n/N; the gates are the
straight-through one-hot h = onehot(argmax z) + z - sg(z). Only the argmax op runs; every op j that did not run
adds h_j * 1 (value 0), so dL/dh_j = sum(dL/de). θ's gradient is dL/dh pulled back through z by autograd.

The argmax of z does not depend on τ, so ``ask`` only draws G and picks the op; ``tell`` rebuilds z from the
same G and the unchanged θ, with the τ of the current step (the trainer calls ``set_schedule`` before ``ask``,
so τ uses n = arch updates done, as the official ``n_iter``).
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register
from .gumbel import gumbel_noise, perturbed_scores, relaxed_sample

def gdas_temperature(progress: float) -> float:
    return 10.0 - 9.9 * progress


@register("gdas", "GDAS: Gumbel straight-through one-hot, sparse propagation, autograd to θ (Dong & Yang 2019)")
class GDAS(ThetaStrategy):
    paper_derivation = "best_sampled"  # AdvantageNAS code, PTB mode lists (spec §3): R and GD report PB
    name = "gdas"

    def ask(self, phase: str) -> list[Sample]:
        # Every iteration draws a fresh architecture, warm-up included (official code).
        noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
        with torch.no_grad():
            index = perturbed_scores(self.logits(), noise).argmax(-1).tolist()
        sample = self.one_hot_sample(index)
        if phase == "arch":
            sample.info["noise"] = noise
            sample.inactive_grad = True  # the "+ h_j * 1" term: the ops that did not run get sum(dL/de)
        return [sample]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, gate_grad in zip(samples, gate_grads):
            # h = onehot + z - sg(z) has dh/dz = I, so θ's gradient is z's vector-Jacobian product with dL/dh.
            z = relaxed_sample(self.logits(), sample.info["noise"], gdas_temperature(self.progress))
            (grad,) = torch.autograd.grad(z, self.theta, gate_grad.to(self.device))
            self.apply_gradient(grad)
