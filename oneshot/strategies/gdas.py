"""GDAS (Dong & Yang, CVPR 2019) as the AdvantageNAS code runs it (spec advantagenas.md §2).

z = softmax((log(p + 0.001) + G) / τ) with Gumbel noise G and τ = 10 - 9.9 n/N; the gates are the
straight-through one-hot h = onehot(argmax z) + z - sg(z). Only the argmax op runs; every op j that did not run
adds h_j * 1 (value 0), so dL/dh_j = sum(dL/de). θ's gradient is dL/dh pulled back through z by autograd.

The argmax of z does not depend on τ, so ``ask`` only draws G and picks the op; ``tell`` rebuilds z from the
same G and the unchanged θ, with the τ of the current step (the trainer calls ``set_schedule`` between the two,
so τ uses n = arch updates done, as the official ``n_iter``). The Gumbel helpers here are shared by the other
relaxed / Gumbel-sampling baselines.
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register

SMOOTHING = 0.001  # the official code takes log(p + 0.001): a floor on every op's chance
CLIP = 0.001       # ... and clips the uniforms behind the Gumbel noise to [0.001, 0.999]


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """-log(-log(u)), u ~ U[0.001, 0.999] (the official clipping), drawn on the host."""
    u = torch.rand(shape, generator=generator).clamp(CLIP, 1 - CLIP)
    return -torch.log(-torch.log(u))


def perturbed_scores(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log(softmax(logits) + 0.001) + G; choices masked out of the logits (-inf) stay at -inf."""
    probs = torch.softmax(logits, -1)
    return torch.log(probs + SMOOTHING).masked_fill(torch.isinf(logits), -torch.inf) + noise


def relaxed_sample(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """The Gumbel-softmax z = softmax((log(p + 0.001) + G) / τ), differentiable in the logits."""
    return torch.softmax(perturbed_scores(logits, noise) / tau, -1)


def gdas_temperature(progress: float) -> float:
    return 10.0 - 9.9 * progress


@register("gdas", "GDAS: Gumbel straight-through one-hot, sparse propagation, autograd to θ (Dong & Yang 2019)")
class GDAS(ThetaStrategy):
    name = "gdas"

    def __init__(self, space, **kw):
        super().__init__(space, **kw)
        self.noise: torch.Tensor | None = None  # G of the pending arch step (lives from ask to tell only)

    def ask(self, phase: str) -> Sample:
        # Every iteration draws a fresh architecture, warm-up included (official code).
        noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
        with torch.no_grad():
            index = perturbed_scores(self.logits(), noise).argmax(-1).tolist()
        sample = self.one_hot_sample(index)
        if phase == "arch":
            self.noise = noise
            sample.inactive_grad = True  # the "+ h_j * 1" term: the ops that did not run get sum(dL/de)
        return sample

    def tell(self, sample, loss, gate_grad, phase):
        if phase != "arch":
            return
        # h = onehot + z - sg(z) has dh/dz = I, so θ's gradient is z's vector-Jacobian product with dL/dh.
        z = relaxed_sample(self.logits(), self.noise, gdas_temperature(self.progress))
        (grad,) = torch.autograd.grad(z, self.theta, gate_grad.to(self.device))
        self.noise = None
        self.apply_gradient(grad)

    def state_dict(self):
        return {**super().state_dict(), "progress": self.progress}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.progress = state["progress"]
