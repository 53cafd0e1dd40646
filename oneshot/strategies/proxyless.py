"""ProxylessNAS (Cai et al., ICLR 2019) as the AdvantageNAS code runs it (spec advantagenas.md §2, pitfall 3).

Two paths per edge, picked by Gumbel-top-2 on log(p + 0.001) (sampling without replacement); both run and are
summed with gates 1, in weight and arch steps alike (the official code; the original ProxylessNAS runs only the
path picked by q). With q = softmax of the two sampled logits and d_n = dL/dgate_n, the gradient on the pair is
∂/∂θ_m = Σ_n d_n q_n (δ_mn - q_m) = q_m (d_m - Σ_n q_n d_n); other entries get none (but coupled L2 and
Adam's momentum still move them, as in the code). After the Adam step the two sampled logits are shifted by
one offset per edge (the code applies each edge's offset to other edges' columns: fixed here):
- ``rescale="pair"`` (default): off = log(Σ_pair exp θ' / Σ_pair exp θ), the original ProxylessNAS rule, so
  the pair keeps its total probability mass relative to the ops it did not compete with. Spec pitfall 3 lists
  the sum over all ops as a bug of the code, so we follow the pair.
- ``rescale="all"``: the code's off = log(Σ_all exp θ' / Σ_all exp θ + 1e-4), per edge.
The sample's ``arch`` (for the best-sampled record) is the first Gumbel pick, itself a draw from p; the
official code logs no best-sampled architecture for ProxylessNAS.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import Sample, ThetaStrategy, register
from .gumbel import gumbel_noise, perturbed_scores


def proxyless_gradient(theta: torch.Tensor, pair: torch.Tensor, gate_grad: torch.Tensor) -> torch.Tensor:
    """pair: bool (E, K) marking the sampled ops; returns q_m (d_m - Σ_n q_n d_n) on the pair, 0 elsewhere."""
    q = torch.softmax(theta.masked_fill(~pair, -torch.inf), -1)
    d = gate_grad.masked_fill(~pair, 0.0)
    return q * (d - (q * d).sum(-1, keepdim=True))


def rescale(old: torch.Tensor, new: torch.Tensor, pair: torch.Tensor, mask: torch.Tensor,
            mode: str = "pair") -> torch.Tensor:
    """Subtract a per-edge offset from the sampled logits of each edge, leaving every other entry alone."""
    over = pair if mode == "pair" else mask
    log_sum = lambda t: torch.logsumexp(t.masked_fill(~over, -torch.inf), -1, keepdim=True)
    if mode == "pair":
        offset = log_sum(new) - log_sum(old)
    else:
        offset = torch.log(torch.exp(log_sum(new) - log_sum(old)) + 1e-4)
    return new - offset * pair


@register("proxyless", "ProxylessNAS: two sampled paths per edge, gradient on the pair, rescaled (Cai et al. 2019)")
class ProxylessNAS(ThetaStrategy):
    name = "proxyless"

    def __init__(self, space, rescale: str = "pair", **kw):
        super().__init__(space, **kw)
        if rescale not in ("pair", "all"):
            raise UserError(f"proxyless: rescale must be 'pair' or 'all', got {rescale!r}")
        self.rescale = rescale

    def ask(self, phase: str) -> list[Sample]:
        noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
        with torch.no_grad():
            scores = perturbed_scores(self.logits(), noise)
            order = scores.topk(2, -1).indices.tolist()
            valid = torch.isfinite(scores).sum(-1).tolist()  # an edge with one choice left runs that one
        active = [sorted(row[:min(2, n)]) for row, n in zip(order, valid)]
        gates = torch.zeros(self.theta.shape)
        for i, ops in enumerate(active):
            gates[i, ops] = 1.0
        return [Sample(gates.to(self.device), active, tuple(row[0] for row in order), unit=True)]

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, gate_grad in zip(samples, gate_grads):
            pair = sample.gates.to(self.device) > 0
            old = self.theta.detach().clone()
            self.apply_gradient(proxyless_gradient(old, pair, gate_grad.to(self.device)))
            with torch.no_grad():
                self.theta.copy_(rescale(old, self.theta.detach(), pair, self.mask, self.rescale))
