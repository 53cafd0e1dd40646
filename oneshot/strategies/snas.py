"""SNAS (Xie et al., ICLR 2019; spec snas.md), the paper's own method. ``snas_relaxed`` is the AdvantageNAS
code's simplification; this one adds the resource constraint, SNAS's temperature and optimiser, and edge-all
derivation.

Single-level (``arch_batch = "same"``): one relaxed forward and one backward on a training batch give both the
weight gradient and s = dL/dZ. Per step, Z = softmax((a + G)/τ) with log-α logits a (init N(1, 0.01)) and Gumbel
noise G; every op runs, mixed by Z. ``tell`` pulls s back through Z: dL/da_m = (Z_m/τ)(s_m − Σ_k Z_k s_k)
(spec §1, ``snas_alpha_gradient``), then Adam (lr 3e-4, betas (0.5, 0.999), L2 1e-3, global-norm clip 10: the
official multi-GPU path, spec pitfall 1). α's learning rate stays constant, as in the code (the trainer's cosine
``lr_scale`` is ignored). τ falls linearly from ``tau0`` = 1 to ``tau_min`` = 0.03 over the fraction
``tau_horizon`` of the arch steps (the code: per epoch over a hard-coded 150 epochs, stepped before the epoch).
The noise and τ of a sample travel in ``Sample.info``.

Resource penalty (spec §2), η · Σ_g w_g Σ_e f(C_ge(Z_e)) with C_ge(Z_e) = Σ_k Z_ek c_gek the cost of edge e in
cell g, f = mean over the resources of log(max(C, 1)) (``log_penalty``, the README's setting) or the raw cost
(0.43·(2·size + FLOPs/4000 + MAC/100) for ``resource="all"``), and w_g = 1 / the number of cells of g's type (the
code's /6 and /2, here computed from the depth; ``cell_norm=False``: w = 1). Its α-gradient by ``estimator``:
- ``reparametrization`` (README): the penalty of the gates themselves is added to the loss (``loss_term``), so
  its gradient joins s and goes back through Z with it;
- ``policy_gradient`` (the paper): Σ_e log q_τ(Z_e) · stopgrad(penalty_e), q_τ the Concrete density with Z
  detached (the code leaves Z attached, adding a pathwise term: spec pitfall 2);
- ``discrete``: the penalty of softmax(a) instead of Z, differentiated analytically.
The space supplies the costs through ``space.resource_table(resource, channels, cells, input_size)`` ->
(costs (cells, decisions, K), cell weights (cells,)), for the supernet described by ``cost_channels``,
``cost_cells`` (0: the space's own search depth) and ``cost_input_size`` (default: the 16-channel, 32x32 CIFAR
search); a space without a cost table gets no resource term (``resource_note`` says so).

Levels. The paper names three constraint strengths but gives no η (spec §2), so these presets are ours, sweeping
upward from the README's η = 1.5e-3 (reparametrization + log penalty, 20-cell search): ``mild`` 1.5e-3,
``moderate`` 5e-3 (≈ ×3), ``aggressive`` 1.5e-2 (×10, above the code's own default 1e-2 for this estimator, so
that the reduction cell can collapse to ``none`` as the released aggressive cell does); ``none`` 0. They are
untested against the paper's cells; pass ``eta`` to set η directly (it overrides the level).

Derivation: ``edge-all`` (default, the released cells: per edge the argmax over all ops, ``none`` included) or
``top2`` (the DARTS rule, for spaces that offer ``derive_top2``).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .base import Sample, ThetaStrategy, register

LEVELS = {"none": 0.0, "mild": 1.5e-3, "moderate": 5e-3, "aggressive": 1.5e-2}
ESTIMATORS = ("reparametrization", "policy_gradient", "discrete")
RESOURCES = ("all", "size", "flops", "mac")
DERIVATIONS = ("edge-all", "top2")
# resource="all" without the log: the code's 0.43 · (2·size + FLOPs/4000 + MAC/100)
LINEAR_ALL = (0.43 * 2, 0.43 / 4000, 0.43 / 100)


# --- pure functions ------------------------------------------------------------------------------------------
def snas_temperature(progress: float, tau0: float = 1.0, tau_min: float = 0.03, horizon: float = 1.0) -> float:
    """Linear from ``tau0`` at progress 0 to ``tau_min`` at progress ``horizon`` (a fraction of the schedule),
    constant after."""
    return max(tau_min, tau0 - (tau0 - tau_min) * progress / horizon)


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """G = −log(−log U), U ~ U(0, 1) (unclipped, as in the SNAS code; U = 0 is nudged to the smallest float)."""
    u = torch.rand(shape, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


def relaxed_sample(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """Z = softmax((a + G)/τ); choices masked to −inf in ``logits`` get 0."""
    return torch.softmax((logits + noise) / tau, -1)


def snas_alpha_gradient(z: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Spec §1: dL/da_m = (Z_m/τ)(s_m − Σ_k Z_k s_k), s = dL/dZ."""
    return z / tau * (s - (z * s).sum(-1, keepdim=True))


def concrete_log_prob(logits: torch.Tensor, log_z: torch.Tensor, tau: float, mask: torch.Tensor) -> torch.Tensor:
    """log q_τ(z) of the Concrete distribution per row (spec §2), over the n real choices of each row:
    log((n−1)!) + (n−1) log τ + Σ_k a_k − (τ+1) Σ_k log z_k − n log Σ_k exp(a_k − τ log z_k).
    ``log_z`` is given in log form so that near-one-hot samples at small τ do not underflow."""
    n = mask.sum(-1).to(logits.dtype)
    a = logits.masked_fill(~mask, 0.0)
    lz = log_z.masked_fill(~mask, 0.0)
    lse = torch.logsumexp((a - tau * lz).masked_fill(~mask, -math.inf), -1)
    return torch.lgamma(n) + (n - 1) * math.log(tau) + a.sum(-1) - (tau + 1) * lz.sum(-1) - n * lse


def edge_penalty(z: torch.Tensor, costs: torch.Tensor, cell_weight: torch.Tensor, coefficients: torch.Tensor,
                 log_penalty: bool) -> torch.Tensor:
    """Per-edge penalty Σ_g w_g Σ_r coef_r f(C_rge), C_rge = Σ_k z_ek c_rgek, f = log∘max(·, 1) or identity.

    z: (..., D, K); costs: (R, G, D, K); cell_weight: (G,); coefficients: (R,). Returns (..., D)."""
    c = torch.einsum("...dk,rgdk->...rgd", z, costs)
    f = torch.log(c.clamp_min(1.0)) if log_penalty else c
    return torch.einsum("...rgd,r,g->...d", f, coefficients, cell_weight)


# --- the strategy --------------------------------------------------------------------------------------------
@register("snas", "SNAS: Gumbel-softmax relaxation, single-level, resource penalty, edge-all derivation "
                  "(Xie et al. 2019)")
class SNAS(ThetaStrategy):
    name = "snas"
    arch_batch = "same"

    def __init__(self, space, level: str = "mild", eta: float | None = None, estimator: str = "reparametrization",
                 resource: str = "all", log_penalty: bool = True, cell_norm: bool = True,
                 cost_channels: int = 16, cost_cells: int = 0, cost_input_size: int = 32, tau0: float = 1.0,
                 tau_min: float = 0.03, tau_horizon: float = 1.0, derive: str = "edge-all", init_mean: float = 1.0,
                 init_std: float = 0.01,
                 lr: float | None = 3e-4, betas=(0.5, 0.999), weight_decay: float = 1e-3, grad_clip: float = 10.0,
                 **kw):
        if level not in LEVELS:
            raise UserError(f"snas: unknown level {level!r}; choose from {', '.join(LEVELS)}")
        if estimator not in ESTIMATORS:
            raise UserError(f"snas: unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if resource not in RESOURCES:
            raise UserError(f"snas: unknown resource {resource!r}; choose from {', '.join(RESOURCES)}")
        if derive not in DERIVATIONS:
            raise UserError(f"snas: unknown derivation {derive!r}; choose from {', '.join(DERIVATIONS)}")
        if derive == "top2" and not hasattr(space, "derive_top2"):
            raise UserError(f"snas: the {space.name} space has no top-2 rule; use derive='edge-all'")
        if not (0 < tau_min <= tau0) or tau_horizon <= 0:
            raise UserError(f"snas: need 0 < tau_min <= tau0 and tau_horizon > 0, got {tau_min}, {tau0}, {tau_horizon}")
        super().__init__(space, lr=lr, betas=betas, weight_decay=weight_decay, grad_clip=grad_clip, **kw)
        with torch.no_grad():  # log α ~ N(1, 0.01) (the code's loc_mean, loc_std)
            init = torch.randn(self.theta.shape, generator=self.generator) * init_std + init_mean
            self.theta.copy_(init.to(self.device))
        self.eta = LEVELS[level] if eta is None else float(eta)
        self.estimator, self.log_penalty, self.derive_rule = estimator, log_penalty, derive
        self.tau0, self.tau_min, self.tau_horizon = tau0, tau_min, tau_horizon
        self.costs = self.cell_weight = self.coefficients = None
        self.resource_note = None
        if self.eta > 0:
            network = dict(channels=cost_channels, cells=cost_cells or None, input_size=cost_input_size)
            self._load_costs(resource, cell_norm, network)

    def _load_costs(self, resource: str, cell_norm: bool, network: dict) -> None:
        if not hasattr(self.space, "resource_table"):
            self.resource_note = f"the {self.space.name} space has no cost table: no resource term"
            return
        kinds = ("size", "flops", "mac") if resource == "all" else (resource,)
        tables = [self.space.resource_table(kind, **network) for kind in kinds]
        self.costs = torch.stack([t[0] for t in tables]).to(self.device, torch.float32)          # (R, G, D, K)
        weight = tables[0][1] if cell_norm else torch.ones_like(tables[0][1])
        self.cell_weight = weight.to(self.device, torch.float32)                                  # (G,)
        if resource == "all" and not self.log_penalty:
            coefficients = LINEAR_ALL
        else:  # the log penalty averages the resources' logs
            coefficients = [1.0 / len(kinds)] * len(kinds)
        self.coefficients = torch.tensor(coefficients, device=self.device)

    # -- schedule -----------------------------------------------------------------------------------------
    def temperature(self) -> float:
        return snas_temperature(self.progress, self.tau0, self.tau_min, self.tau_horizon)

    def set_schedule(self, lr_scale: float, progress: float) -> None:
        self.progress = progress  # α's learning rate is constant in the SNAS code

    def apply_gradient(self, grad: torch.Tensor) -> None:
        """The code's order: clip the global norm at 10, then Adam with its coupled L2 (weight_decay)."""
        grad = grad.masked_fill(~self.mask, 0.0)
        norm = grad.norm()
        if norm > self.grad_clip:
            grad = grad * (self.grad_clip / (norm + 1e-6))
        self.theta.grad = grad + self.weight_decay * self.theta.detach()
        self.optimizer.step()

    # -- ask / tell -----------------------------------------------------------------------------------------
    def ask(self, phase: str) -> list[Sample]:
        noise = gumbel_noise(self.theta.shape, self.generator).to(self.device)
        tau = self.temperature()
        with torch.no_grad():
            logits = self.logits()
            gates = relaxed_sample(logits, noise, tau)
            arch = tuple((logits + noise).argmax(-1).tolist())  # the discrete sample Z relaxes
        return [Sample(gates, None, arch, info={"noise": noise, "tau": tau})]

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        """η · the penalty of (relaxed or expected) one-hot rows z (..., D, K), summed over edges."""
        costs = self.costs.to(z.device, z.dtype)
        per_edge = edge_penalty(z, costs, self.cell_weight.to(z.device, z.dtype),
                                self.coefficients.to(z.device, z.dtype), self.log_penalty)
        return self.eta * per_edge.sum(-1)

    def loss_term(self, sample: Sample, gates: torch.Tensor) -> torch.Tensor | None:
        if self.costs is None or self.estimator != "reparametrization":
            return None
        return self.penalty(gates)

    def resource_surrogate(self, sample: Sample) -> torch.Tensor | None:
        """A function of θ whose gradient is the policy-gradient or discrete estimate of the penalty's."""
        if self.costs is None or self.estimator == "reparametrization":
            return None
        logits = self.logits()
        if self.estimator == "discrete":
            return self.penalty(torch.softmax(logits, -1))
        noise, tau = sample.info["noise"], sample.info["tau"]
        with torch.no_grad():  # Z and its cost are fixed: pure score function (spec pitfall 2)
            log_z = torch.log_softmax((logits + noise) / tau, -1)
            per_edge = self.eta * edge_penalty(log_z.exp(), self.costs, self.cell_weight, self.coefficients,
                                               self.log_penalty)
        return (concrete_log_prob(logits, log_z, tau, self.mask) * per_edge).sum()

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for sample, gate_grad in zip(samples, gate_grads):
            # θ has not moved since ask: Z rebuilt from the same G and τ, now with a graph
            z = relaxed_sample(self.logits(), sample.info["noise"], sample.info["tau"])
            objective = (z * gate_grad.to(self.device, z.dtype)).sum()
            surrogate = self.resource_surrogate(sample)
            if surrogate is not None:
                objective = objective + surrogate
            (grad,) = torch.autograd.grad(objective, self.theta)
            self.apply_gradient(grad)

    def derive(self):
        if self.derive_rule == "top2":
            return self.space.derive_top2(self.logits().detach())
        return tuple(self.logits().argmax(-1).tolist())
