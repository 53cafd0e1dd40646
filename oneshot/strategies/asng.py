"""ASNG-NAS (Akimoto et al., ICML 2019): stochastic natural gradient on θ with an adaptive step size.

θ is a distribution, not a set of logits: one categorical row θ_i (summing to 1) per categorical decision and
one Gaussian N(m_j, σ_j²) per integer decision, the latter stored as expectation parameters (m, v = m² + σ²).
Each arch step ranks two fresh samples on one shared val batch (u = +1 best, -1 worst); the natural gradient
is then ĝ = ½(x_best - x_worst) (and ½(z_b - z_w), ½(z_b² - z_w²) for the Gaussians), applied as
θ += δ ĝ / ‖ĝ‖_F followed by the range restriction θ_ik ≥ 1 / (valid_d (C_i - 1)). The step δ = δ_init / Δ
adapts: s accumulates the Fisher-whitened unit steps F^{1/2}ĝ / ‖ĝ‖_F, γ is what ‖s‖² would be for pure noise,
and Δ shrinks (δ grows) while ‖s‖² / α > γ. Spec: asng.md §1-2.

The math is pure numpy float64 functions with arbitrary leading batch dimensions, so the toy benchmark
(``experiments/asng_toy.py``) runs hundreds of independent runs in one array; the strategy is a thin ask/tell shell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..spaces.base import Architecture, Categorical, Integer, SearchSpace
from .base import Sample, Strategy, register

TIE = 1e-14          # relative tie threshold of the ranking (official code)
NORM_EPS = 1e-9      # added to ‖ĝ‖_F before dividing (official toy / integer code)
SKIP = 1e-18         # all |ĝ| below this: no update at all (official classification code)
SIGMA_MIN = 0.25     # lower bound of an integer decision's σ


# --- layout of a mixed categorical + integer space --------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Constants of the distribution: categories per categorical row, bounds per integer."""

    sizes: np.ndarray   # (d,) C_i of each categorical decision
    low: np.ndarray     # (d_int,) bounds of each integer decision
    high: np.ndarray

    @classmethod
    def of(cls, sizes=(), low=(), high=()) -> "Layout":
        lay = cls(np.asarray(sizes, dtype=np.int64).reshape(-1), np.asarray(low, dtype=np.float64).reshape(-1),
                  np.asarray(high, dtype=np.float64).reshape(-1))
        free = lay.sizes[lay.sizes > 1]
        if np.any(lay.valid_d * (free - 1) <= free):
            # C_i θ_min < 1 is needed for any room above θ_min: valid_d = 1 makes the restriction infeasible,
            # and valid_d = 2 pins a 2-choice row at (1/2, 1/2) forever (the official formula divides 0 by 0).
            raise UserError(f"ASNG's range restriction θ ≥ 1/(valid_d (C-1)) needs valid_d (C-1) > C for every "
                            f"decision: at least 2 categorical decisions with 2+ choices, 3 if one has only 2 "
                            f"(this space has valid_d = {lay.valid_d}, choices {free.tolist()}); search a larger space")
        if np.any(lay.high - lay.low < 1):
            raise UserError("ASNG: every integer decision needs at least two values (high > low)")
        if lay.n == 0:
            raise UserError("ASNG: the space has nothing to search (every decision has a single choice)")
        return lay

    @property
    def cmax(self) -> int:
        return int(self.sizes.max()) if len(self.sizes) else 1

    @property
    def mask(self) -> np.ndarray:
        """(d, Cmax) real entries (padding entries of shorter rows are False and stay 0)."""
        return np.arange(self.cmax) < self.sizes[:, None]

    @property
    def valid_d(self) -> int:
        return int((self.sizes > 1).sum())

    @property
    def n(self) -> int:
        """Free parameters: C_i - 1 per categorical row, 2 per integer (m and v)."""
        return int((self.sizes - 1).sum()) + 2 * len(self.low)

    @property
    def theta_min(self) -> np.ndarray:
        """(d,) 1 / (valid_d (C_i - 1)) for rows with C_i > 1, else 0."""
        free = np.maximum(self.sizes - 1, 1)
        return np.where(self.sizes > 1, 1.0 / (max(self.valid_d, 1) * free), 0.0)

    @property
    def sigma_max(self) -> np.ndarray:
        return (self.high - self.low) / 2.0

    def initial(self):
        """θ uniform per row; m at the middle of each range with σ = σ_max (official init)."""
        theta = np.where(self.mask, 1.0 / self.sizes[:, None], 0.0)
        m = (self.low + self.high) / 2.0
        return theta, m, m ** 2 + self.sigma_max ** 2


# --- sampling and decoding --------------------------------------------------------------------------
def sample_categorical(theta: np.ndarray, u: np.ndarray, sizes: np.ndarray):
    """Inverse-CDF draw per row with u ~ U[0,1) of shape (..., d): returns (indices (..., d), one-hot).

    Choice k is taken when cumθ_{k-1} ≤ u < cumθ_k (official rule); clipping to C_i - 1 guards against a row
    sum a rounding error below 1.
    """
    index = (u[..., None] >= np.cumsum(theta, -1)).sum(-1)
    index = np.minimum(index, sizes - 1)
    return index, (np.arange(theta.shape[-1]) == index[..., None]).astype(np.float64)


def mirrored_pair(m: np.ndarray, v: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """The antithetic pair (m + σξ, m - σξ) stacked on a new axis -2: one ξ per pair (spec §1.2)."""
    sigma = np.sqrt(np.maximum(v - m ** 2, 0.0))
    return np.stack([m + sigma * xi, m - sigma * xi], axis=-2)


def decode_integers(z: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Clip, then round half to even (np.round, as torch.round): 2.5 -> 2, 3.5 -> 4 (pitfall 11)."""
    return np.round(np.clip(z, low, high)).astype(np.int64)


# --- ranking and natural gradients ------------------------------------------------------------------
def ranking_utility(f: np.ndarray) -> np.ndarray:
    """Utilities u (..., λ) in the samples' order for losses f (..., λ) (minimisation).

    The ceil(λ/4) best get +1/μ, the ceil(λ/4) worst -1/μ, and tied runs share the mean of their weights.
    λ = 2: (+1, -1) for (best, worst), (0, 0) on a tie. A tie is f_hi - f_lo ≤ 1e-14 |f_lo|: the official
    relative rule (< 1e-14 f_lo) made exact for equal and for non-positive losses.
    """
    f = np.asarray(f, dtype=np.float64)
    lam = f.shape[-1]
    if lam == 2:
        lo, hi = np.minimum(f[..., 0], f[..., 1]), np.maximum(f[..., 0], f[..., 1])
        sign = np.where(hi - lo <= TIE * np.abs(lo), 0.0, np.where(f[..., 0] < f[..., 1], 1.0, -1.0))
        return np.stack([sign, -sign], -1)
    flat = f.reshape(-1, lam)
    out = np.zeros_like(flat)
    mu = math.ceil(0.25 * lam)
    base = np.zeros(lam)
    base[:mu], base[lam - mu:] = 1.0 / mu, -1.0 / mu
    for row, fr in zip(out, flat):
        idx = np.argsort(fr, kind="stable")
        start = 0
        for i in range(lam):  # close a run of ties at i when the next value is clearly larger
            if i == lam - 1 or fr[idx[i + 1]] - fr[idx[i]] > TIE * abs(fr[idx[i]]):
                row[idx[start:i + 1]] = base[start:i + 1].mean()
                start = i + 1
    return out.reshape(f.shape)


def natural_gradient(theta: np.ndarray, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """ĝ = (1/λ) Σ_k u_k (x_k - θ) for one-hot samples x (..., λ, d, Cmax); λ = 2 gives ½(x_best - x_worst)."""
    return np.mean(u[..., None, None] * (x - theta[..., None, :, :]), axis=-3)


def gaussian_natural_gradient(m: np.ndarray, v: np.ndarray, z: np.ndarray, u: np.ndarray):
    """(ĝ_m, ĝ_v) = (1/λ) Σ u_k (z_k - m, z_k² - v), with the unrounded z (..., λ, d_int) (pitfall 10)."""
    return (np.mean(u[..., None] * (z - m[..., None, :]), -2),
            np.mean(u[..., None] * (z ** 2 - v[..., None, :]), -2))


def sqrt_fisher_categorical(theta: np.ndarray, g: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The official F^{1/2}ĝ in the first C_i - 1 coordinates of each row, flattened to (..., N).

    s_ik = ĝ_ik / √θ_ik + √θ_ik Σ_{j<C-1} ĝ_ij / (θ_iC + √θ_iC), k < C_i - 1. Its squared norm is the Fisher
    norm Σ_k ĝ_ik² / θ_ik over real entries (rows of ĝ sum to 0); padding never enters (pitfall 12).
    """
    rows = np.arange(theta.shape[-2])
    head = np.arange(theta.shape[-1]) < (sizes - 1)[:, None]            # (d, Cmax)
    last = theta[..., rows, sizes - 1][..., None]                        # θ_iC
    th, gh = np.where(head, theta, 1.0), np.where(head, g, 0.0)
    s = gh / np.sqrt(th) + np.sqrt(th) * gh.sum(-1, keepdims=True) / (last + np.sqrt(last))
    return s[..., head]


def gaussian_covariance(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cov(z, z²) = σ² [[1, 2m], [2m, 4m² + 2σ²]] (..., d_int, 2, 2): the inverse Fisher in (m, v)."""
    s2 = v - m ** 2
    return s2[..., None, None] * np.stack([np.stack([np.ones_like(m), 2 * m], -1),
                                           np.stack([2 * m, 4 * m ** 2 + 2 * s2], -1)], -2)


def sqrt_fisher_gaussian(m: np.ndarray, v: np.ndarray, gm: np.ndarray, gv: np.ndarray) -> np.ndarray:
    """F^{1/2}ĝ = Cov^{-1/2} (ĝ_m, ĝ_v) per integer, flattened (..., 2 d_int); squared norm ĝᵀ Cov⁻¹ ĝ."""
    w, vec = np.linalg.eigh(gaussian_covariance(m, v))
    g = np.stack([gm, gv], -1)[..., None]
    out = (vec @ ((np.swapaxes(vec, -1, -2) @ g) / np.sqrt(w)[..., None]))[..., 0]
    return out.reshape(out.shape[:-2] + (2 * out.shape[-2],))


# --- the constraints ---------------------------------------------------------------------------------
def restrict_categorical(theta: np.ndarray, lay: Layout) -> np.ndarray:
    """Official range restriction per row: θ ← max(θ, θ_min), then shrink the excess above θ_min
    proportionally so the row sums to 1, then renormalise. Keeps θ_min ≤ θ_ik ≤ 1 - (C_i - 1) θ_min."""
    mask, tmin = lay.mask, lay.theta_min[:, None]
    r = np.where(mask, np.maximum(theta, tmin), 0.0)
    total = r.sum(-1, keepdims=True)
    room = np.maximum(total - lay.sizes[:, None] * tmin, 1e-300)  # > 0 for every space Layout.of accepts
    r = np.where(mask, r - (total - 1.0) * (r - tmin) / room, 0.0)
    return r / r.sum(-1, keepdims=True)


def restrict_gaussian(m: np.ndarray, v: np.ndarray, lay: Layout):
    """m into [low, high], then σ into [1/4, (high - low)/2] (v = m² + σ²)."""
    m = np.clip(m, lay.low, lay.high)
    return m, np.clip(v, m ** 2 + SIGMA_MIN ** 2, m ** 2 + lay.sigma_max ** 2)


# --- one update ----------------------------------------------------------------------------------------
def asng_update(lay: Layout, state: dict, x: np.ndarray, z: np.ndarray, f: np.ndarray, delta_init: float = 1.0,
                alpha: float = 1.5, adaptive: bool = True, skip_zero: bool = True) -> dict:
    """One ASNG (or, with ``adaptive=False``, fixed-δ SNG) step from λ ranked samples.

    state: theta (..., d, Cmax), m, v (..., d_int), s (..., n), gamma, Delta (...); x (..., λ, d, Cmax) one-hot,
    z (..., λ, d_int) unrounded Gaussian draws, f (..., λ) losses. Returns the new state plus ``delta`` (the
    step used), ``skipped`` (nothing changed) and ``norm`` (‖ĝ‖_F). Leading batch dimensions are independent runs.

    A tie always skips. ``skip_zero`` also skips a zero ĝ (two identical samples with different losses), as the
    official NAS code does; with ``skip_zero=False`` such a step still decays s and grows γ (so Δ grows and δ
    shrinks), as the official toy code does.
    """
    theta, m, v, s, gamma, Delta = (state[k] for k in ("theta", "m", "v", "s", "gamma", "Delta"))
    u = ranking_utility(f)
    g = natural_gradient(theta, x, u)
    gm, gv = gaussian_natural_gradient(m, v, z, u)
    fvec = np.concatenate([sqrt_fisher_categorical(theta, g, lay.sizes), sqrt_fisher_gaussian(m, v, gm, gv)], -1)
    norm = np.sqrt((fvec ** 2).sum(-1)) + NORM_EPS
    skipped = (u == 0).all(-1)
    if skip_zero:
        zero = (np.abs(g) < SKIP).all((-1, -2)) & (np.abs(gm) < SKIP).all(-1) & (np.abs(gv) < SKIP).all(-1)
        skipped = skipped | zero

    delta = delta_init / Delta if adaptive else delta_init * np.ones_like(Delta, dtype=np.float64)
    eps = delta / norm
    new_theta = restrict_categorical(theta + eps[..., None, None] * g, lay)
    new_m, new_v = restrict_gaussian(m + eps[..., None] * gm, v + eps[..., None] * gv, lay)
    if adaptive:
        # β uses the current δ and n free parameters (pitfall 6). Capped at 1: β ≥ 2 (δ ≥ 2√n) would make
        # √(β(2-β)) NaN in the official code; in the paper's settings β < 1 and the cap does not act.
        beta = np.minimum(delta / math.sqrt(lay.n), 1.0)
        new_s = (1 - beta)[..., None] * s + (np.sqrt(beta * (2 - beta)) / norm)[..., None] * fvec
        new_gamma = (1 - beta) ** 2 * gamma + beta * (2 - beta)
        new_Delta = Delta * np.exp(beta * (new_gamma - (new_s ** 2).sum(-1) / alpha))
    else:
        new_s, new_gamma, new_Delta = s, gamma, Delta

    keep = lambda old, new, extra: np.where(skipped.reshape(skipped.shape + (1,) * extra), old, new)  # noqa: E731
    return {"theta": keep(theta, new_theta, 2), "m": keep(m, new_m, 1), "v": keep(v, new_v, 1),
            "s": keep(s, new_s, 1), "gamma": keep(gamma, new_gamma, 0), "Delta": keep(Delta, new_Delta, 0),
            "delta": delta, "skipped": skipped, "norm": norm - NORM_EPS}


def integer_probabilities(m: np.ndarray, v: np.ndarray, lay: Layout, width: int) -> np.ndarray:
    """(d_int, width) P(decode(z) = low + k) for z ~ N(m, σ²): the Gaussian's mass per value, for logs."""
    out = np.zeros((len(m), width))
    sigma = np.sqrt(np.maximum(v - m ** 2, 1e-300))
    cdf = lambda t: 0.5 * (1.0 + torch.special.erf(torch.as_tensor(t / math.sqrt(2.0))).numpy())  # noqa: E731
    for j, (lo, hi) in enumerate(zip(lay.low, lay.high)):
        edges = np.concatenate([[-np.inf], np.arange(lo + 0.5, hi), [np.inf]])
        out[j, : len(edges) - 1] = np.diff(cdf((edges - m[j]) / sigma[j]))
    return out


# --- the strategy -------------------------------------------------------------------------------------
@register("asng", "ASNG-NAS: ranked pairs, natural gradient with an adaptive step (Akimoto et al. 2019)")
@register("sng", "SNG: ASNG's natural gradient with a fixed step delta_init (the ablation)", adaptive=False)
class ASNG(Strategy):
    """ASNG behind ask/tell. Each ``ask`` returns a pair (the arch step ranks it on one val batch and tells both
    losses at once; the weight step averages the pair's losses).

    Samples are one-hot (unit gates, single path). For an ``Integer`` decision, ``arch`` holds the decoded
    value (spec: clip, round half to even) and the gate row is one-hot at ``value - low``; a supernet for
    integer spaces should read ``sample.arch``. The two asks of one step are drawn together: the categorical
    parts independently, the Gaussian parts as a mirrored pair (m ± σξ).

    ``lr`` (the trainer's Adam rate ``a_lr``) is ignored: ASNG's step is ``delta_init`` (default 1, the paper's),
    then adapted; ``set_schedule`` is ignored for the same reason.
    """

    name = "asng"
    needs_gate_grad = False

    def __init__(self, space: SearchSpace, seed: int = 0, device="cpu", lr: float | None = None,
                 delta_init: float = 1.0, alpha: float = 1.5, adaptive: bool = True):
        super().__init__(space, seed, device)
        if not adaptive:
            self.name = "sng"
        self.cat_index = [i for i, d in enumerate(space.decisions) if isinstance(d, Categorical)]
        self.int_index = [i for i, d in enumerate(space.decisions) if isinstance(d, Integer)]
        ints = [space.decisions[i] for i in self.int_index]
        self.layout = Layout.of([space.decisions[i].size for i in self.cat_index],
                                [d.low for d in ints], [d.high for d in ints])
        if delta_init <= 0 or alpha <= 0:
            raise UserError(f"{self.name}: delta_init and alpha must be positive, got {delta_init}, {alpha}")
        self.delta_init, self.alpha, self.adaptive = float(delta_init), float(alpha), adaptive
        theta, m, v = self.layout.initial()
        self.state = {"theta": theta, "m": m, "v": v, "s": np.zeros(self.layout.n), "gamma": np.float64(0.0),
                      "Delta": np.float64(1.0)}
        self.delta = self.delta_init   # the step of the last update (logged)
        self.updates = self.skips = 0

    # -- sampling ---------------------------------------------------------------------------------------
    def draw_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, z): two categorical one-hots drawn independently and a mirrored pair of Gaussian vectors."""
        lay = self.layout
        u = torch.rand(2, len(lay.sizes), generator=self.generator, dtype=torch.float64).numpy()
        xi = torch.randn(len(lay.low), generator=self.generator, dtype=torch.float64).numpy()
        _, x = sample_categorical(self.state["theta"], u, lay.sizes)
        return x, mirrored_pair(self.state["m"], self.state["v"], xi)

    def arch_of(self, x: np.ndarray, z: np.ndarray) -> Architecture:
        arch = [0] * len(self.space)
        for i, k in zip(self.cat_index, x.argmax(-1)):
            arch[i] = int(k)
        for i, value in zip(self.int_index, decode_integers(z, self.layout.low, self.layout.high)):
            arch[i] = int(value)
        return tuple(arch)

    def make_sample(self, arch: Architecture) -> Sample:
        index = [v - d.low if isinstance(d, Integer) else v for v, d in zip(arch, self.space.decisions)]
        sample = self.one_hot_sample(index)
        sample.arch = arch
        return sample

    def ask(self, phase: str) -> list[Sample]:
        x, z = self.draw_pair()
        samples = [self.make_sample(self.arch_of(x[k], z[k])) for k in range(2)]
        for k, sample in enumerate(samples):
            sample.info.update(x=x[k], z=z[k])
        return samples

    def tell(self, samples, losses, gate_grads, phase):
        """One update from the ranked pair of one ``ask``."""
        if phase != "arch":
            return
        if len(samples) != 2 or len(losses) != 2:
            raise UserError(f"ASNG ranks the pair of one ask; it was told {len(samples)} samples")
        x = np.stack([s.info["x"] for s in samples])
        z = np.stack([s.info["z"] for s in samples])
        new = asng_update(self.layout, self.state, x, z, np.array([float(v) for v in losses]),
                          self.delta_init, self.alpha, self.adaptive)
        self.delta = float(new.pop("delta"))
        skipped = bool(new.pop("skipped"))
        new.pop("norm")
        self.state = new
        self.skips += skipped
        self.updates += not skipped

    # -- results -----------------------------------------------------------------------------------------
    def derive(self) -> Architecture:
        """The mode: argmax θ per row (first index on ties), round(m) for integers (spec §1.7)."""
        lay = self.layout
        x = (np.arange(lay.cmax) == self.state["theta"].argmax(-1)[:, None]).astype(np.float64)
        return self.arch_of(x, self.state["m"])

    def probabilities(self) -> torch.Tensor:
        """(decisions, max_choices) float64: θ rows for categorical decisions, and for integer decisions the
        Gaussian's mass on each value low + k (so the trainer's entropy covers both)."""
        probs = np.zeros((len(self.space), self.space.max_choices))
        probs[self.cat_index, : self.layout.cmax] = self.state["theta"]
        if self.int_index:
            probs[self.int_index] = integer_probabilities(self.state["m"], self.state["v"], self.layout,
                                                          self.space.max_choices)
        return torch.from_numpy(probs)

    @property
    def theta(self) -> torch.Tensor:
        """What the trainer writes to result.json: ``probabilities()`` (exactly θ for categorical spaces)."""
        return self.probabilities()

    @property
    def step_size(self) -> float:
        """The δ the next update will use."""
        return self.delta_init / float(self.state["Delta"]) if self.adaptive else self.delta_init

    # -- checkpoints: tensors, floats, ints and lists only (torch.load(weights_only=True)) -----------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                **{k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in self.state.items()},
                "delta": self.delta, "updates": self.updates, "skips": self.skips}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.state = {k: state[k].double().numpy().copy() for k in ("theta", "m", "v", "s", "gamma", "Delta")}
        self.delta, self.updates, self.skips = state["delta"], state["updates"], state["skips"]
