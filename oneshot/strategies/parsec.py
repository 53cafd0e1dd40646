"""PARSEC (Casale et al. 2019) as the AdvantageNAS code runs it (spec advantagenas.md §2, pitfall 4).

Sparse propagation, no gate gradients. Arch steps only buffer (a^(j), L_j); every 8th call takes one Adam step
with ĝ = Σ_j w_j (a^(j) - p), p the current probabilities. Each buffered sample has its own batch and was
evaluated with the weights of its own step.

The sign (``follow_code``):
- True (default), the official code and spec §2, the baseline AdvantageNAS compared against:
  w = softmax(+L), and ĝ is *descended*: high-loss samples push their ops down hardest.
- False, PARSEC's own intent (importance-weighted empirical Bayes): w_j ∝ likelihood = exp(-L_j), and the
  log-likelihood Σ_j w_j log p(a^(j)) is *ascended*, i.e. ĝ = -Σ_j softmax(-L)_j (a^(j) - p).
With Σ w = 1 both are ±(Σ w_j a^(j) - p); to first order in the loss spread both carry the same reward term
(1/8) Σ_j (L_j - mean L) a^(j), and they differ in the sign of mean_j a^(j) - p: zero-mean, but the code's
sign pushes p away from whatever was sampled (entropy-raising), the paper's toward it.
We default to the code because this project reproduces AdvantageNAS's comparison, and spec §2 defines the
baseline by the code.
"""

from __future__ import annotations

import torch

from .base import Sample, ThetaStrategy, register


def parsec_gradient(probs: torch.Tensor, one_hots: torch.Tensor, losses: torch.Tensor,
                    follow_code: bool = True) -> torch.Tensor:
    """one_hots (J, E, K), losses (J,): Σ_j softmax(L)_j (a_j - p) (code) or -Σ_j softmax(-L)_j (a_j - p)."""
    sign = 1.0 if follow_code else -1.0
    w = torch.softmax(sign * losses, 0)
    return sign * (w[:, None, None] * (one_hots - probs)).sum(0)


def count_skipped_step(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
    """Advance Adam's step count t without touching its moments or the parameter.

    Chainer's Adam increments t on every ``update()``, even when the gradient is None, so the bias correction
    of the next real step sees every skipped call; torch's Adam ignores a parameter without a gradient. So we
    create torch's state the way its lazy initialisation would (zeros, t = 0) and add 1 to ``state["step"]``.
    """
    state, group = optimizer.state[param], optimizer.param_groups[0]
    if not state:
        on_device = group.get("capturable") or group.get("fused")
        state["step"] = torch.zeros((), device=param.device) if on_device else torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group.get("amsgrad"):
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1


@register("parsec", "PARSEC: importance-weighted REINFORCE over 8 buffered samples (sparse, no gate gradients)")
class PARSEC(ThetaStrategy):
    name = "parsec"
    needs_gate_grad = False

    def __init__(self, space, samples: int = 8, follow_code: bool = True, **kw):
        super().__init__(space, **kw)
        self.samples, self.follow_code = samples, follow_code
        self.buffer_arch: list[list[int]] = []
        self.buffer_loss: list[float] = []

    def ask(self, phase: str) -> list[Sample]:
        return [self.one_hot_sample(self.sample_from(self.probabilities()))]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, loss in zip(samples, losses):
            self.update(sample, loss)

    def update(self, sample: Sample, loss: float) -> None:
        """One sample joins the buffer; every ``samples``-th one triggers the θ step (Adam counts the others)."""
        self.buffer_arch.append(list(sample.arch))
        self.buffer_loss.append(float(loss))
        if len(self.buffer_loss) < self.samples:
            count_skipped_step(self.optimizer, self.theta)
            return
        one_hots = torch.stack([self.one_hot(a) for a in self.buffer_arch])
        losses = torch.tensor(self.buffer_loss, device=self.device)
        self.apply_gradient(parsec_gradient(self.probabilities(), one_hots, losses, self.follow_code))
        self.buffer_arch, self.buffer_loss = [], []

    def state_dict(self):
        return {**super().state_dict(), "buffer_arch": [list(a) for a in self.buffer_arch],
                "buffer_loss": list(self.buffer_loss)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.buffer_arch = [list(a) for a in state["buffer_arch"]]
        self.buffer_loss = list(state["buffer_loss"])
