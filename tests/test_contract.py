"""The contract every registered strategy keeps: one module parametrised over ``strategies.available()`` (as
Optuna tests every sampler), so a newly registered strategy is tested here without being named (and fails
``test_every_registered_strategy_has_a_reference`` until its expectation is written into ``REFERENCES``).

Everything runs on the 4-op NB201 space (6 decisions x 4 ops, no 'none', so AdvantageNAS's 'none' rule is off and
its estimator is unbiased); a strategy that cannot be created on it is skipped with the reason it gives.

- Interface: ``ask`` returns valid samples in every phase; warm-up and weight ``tell`` calls leave the
  distribution alone; ``derive`` returns a valid architecture.
- Resume: a strategy restored from ``state_dict`` (through ``torch.save``/``torch.load(weights_only=True)``),
  then asked and told exactly what the original is asked and told, has the original's state and samples.
- Expectation: the Monte-Carlo mean of θ's gradient read through the real ``ask``/``tell`` path (weight decay
  0, no clipping, θ's optimiser replaced by SGD with lr 1, θ put back after each step; ASNG: its normalised
  step rescaled) for a loss affine in the gates, L(gates) = Σ_i <c_i, gates_i> + 1, so that dL/dgate = c
  exactly, at schedule point ``PROGRESS``; compared with the exact gradient of E[L] or with the documented
  expectation of each estimator (``REFERENCES``: REINFORCE's 0.95, PARSEC's softmax weights, the Gumbel-softmax
  estimators' relaxed objective, ProxylessNAS's pair, ASNG's ranking). Sample counts: ``Reference.draws``
  (600 to 2,500 gradients).
- Sampling: the frequency of each decision's value in ``sample.arch`` against its documented distribution.

Tolerance: every entry within ``TOL`` = 4.5 standard errors of the Monte-Carlo mean (plus the reference's own
standard error where the reference is itself a Monte-Carlo mean; 1e-6 for deterministic estimators), and a power
check: the largest expected entry is at least ``POWER`` = 15 standard errors, so a doubled, halved, zeroed or
sign-flipped estimator fails. Every run is seeded, so the outcome is deterministic.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

from oneshot import strategies
from oneshot.errors import UserError
from oneshot.spaces import create_space
from oneshot.strategies.base import Sample, ThetaStrategy

NAMES = sorted(strategies.available())
E, K = 6, 4                 # NB201: 6 edges, 4 ops
PROGRESS = 0.6              # schedule point of the Monte-Carlo runs: τ_GDAS = 4.06, τ_SNAS = 0.345
TOL, POWER = 4.5, 15.0
SMOOTHING = 0.001           # the official log(p + 0.001) of the Gumbel draws

# θ (logits) and c (the affine loss): fixed values, every row's entries distinct, all 4096 losses at least
# 3e-6 apart (ASNG ranks them), softmax(θ) ≥ 0.083 (ASNG's θ must stay above θ_min = 1/18)
THETA = torch.tensor([[1.30, 0.63, 0.94, 0.84], [0.70, 0.17, -0.29, 0.38], [-0.26, -0.50, 0.29, -0.36],
                      [0.32, -0.58, 0.19, 1.01], [0.58, -0.27, 0.50, -0.14], [0.88, -0.25, -0.03, -0.97]])
COST = torch.tensor([[0.673636, 0.059473, 0.862727, -0.613257], [-0.350687, 0.188314, 0.950462, -0.390498],
                     [-0.163877, -0.300748, 0.088358, -0.900508], [-0.079815, -0.710964, 0.652279, -0.97673],
                     [0.862883, 0.621444, -0.094549, 0.329506], [-0.881093, 0.025027, -0.256714, -0.208427]],
                    dtype=torch.float64)
# NASP keeps θ in the box [0, 1] per row: THETA rescaled to span it exactly (its projection leaves it alone)
THETA_BOX = (THETA - THETA.min(-1, keepdim=True).values) / (THETA.max(-1, keepdim=True).values
                                                            - THETA.min(-1, keepdim=True).values)
ARCHS = torch.tensor(list(itertools.product(range(K), repeat=E)))   # all 4096 architectures


def make(name: str, seed: int = 0, **hparams):
    try:
        return strategies.create(name, create_space("nb201"), seed=seed, **hparams)
    except UserError as e:
        pytest.skip(f"{name} cannot run on the 4-op NB201 space: {e}")


# --- the affine loss, as the trainer would see it ------------------------------------------------------
def ran(sample: Sample) -> torch.Tensor:
    """1 on the ops that run (every op when ``active`` is None), else 0."""
    if sample.active is None:
        return torch.ones(E, K)
    active = sample.active
    if active and isinstance(active[0][0], list):  # per-cell sampling (abs_uniform): the first cell's child
        active = active[0]
    keep = torch.zeros(E, K)
    for i, ops in enumerate(active):
        keep[i, ops] = 1.0
    return keep


def affine_loss(sample: Sample, cost: torch.Tensor = COST) -> float:
    """Σ_i <c_i, gates_i> + 1 over the ops that run (a sample without gates runs its ops unscaled)."""
    gates = ran(sample).double() if sample.gates is None else sample.gates.detach().double().cpu() * ran(sample)
    return float((gates * cost).sum()) + 1.0


def affine_gate_grad(strategy, sample: Sample, cost: torch.Tensor = COST) -> torch.Tensor:
    """dL/dgate = c on the ops that ran (on every op for dense samples and for ``inactive_grad``), plus the
    gradient of the strategy's own ``loss_term``, as the trainer's autograd gives it."""
    grad = cost.float().clone() * (1.0 if sample.inactive_grad else ran(sample))
    gates = sample.gates.detach().clone().requires_grad_()
    term = strategy.loss_term(sample, gates)
    if term is not None:
        grad = grad + torch.autograd.grad(term, gates)[0]
    return grad


def step(strategy, phase: str, cost: torch.Tensor = COST, told: str | None = None) -> list[Sample]:
    """One ask and tell (told as ``told``, default ``phase``), with dL/dgate where an arch update needs it."""
    told = told or phase
    samples = strategy.ask(phase)
    losses = [affine_loss(x, cost) for x in samples]
    grads = None
    if told == "arch" and strategy.needs_gate_grad:
        grads = [affine_gate_grad(strategy, x, cost) for x in samples]
    strategy.tell(samples, losses, grads, told)
    return samples


def iteration(strategy, searching: bool, cost: torch.Tensor = COST) -> None:
    """One trainer iteration: warm-up, or an arch step (val batch) then a weight step; a single-level strategy
    (``arch_batch == "same"``) is told its weight step as its arch step."""
    if not searching:
        step(strategy, "warmup", cost)
    elif strategy.arch_batch == "same" and strategy.updates_theta:
        step(strategy, "weight", cost, told="arch")
    else:
        if strategy.updates_theta:
            step(strategy, "arch", cost)
        step(strategy, "weight", cost)


# --- reference expectations ------------------------------------------------------------------------------
def score_gradient(theta, p, c):
    """∇_θ E_{a~Cat(softmax θ)}[Σ_i <c_i, a_i>] = p (c - <p, c>) per row: exact."""
    return p * (c - (p * c).sum(-1, keepdim=True)), torch.zeros_like(p)


def reinforce_expectation(theta, p, c):
    """REINFORCE's documented bias: the EMA baseline takes the current loss before the reward is formed, so
    r = (1 - 0.05)(L - b_prev) and E[ĝ] = 0.95 ∇E[L] (b_prev does not depend on the current sample)."""
    exact, se = score_gradient(theta, p, c)
    return 0.95 * exact, se


def parsec_expectation(theta, p, c, buffer: int = 8):
    """PARSEC (code's sign): ĝ = Σ_j softmax(L)_j (a_j - p) over 8 i.i.d. samples. With y = exp(L - min L),
    E[w_1 | a_1 = x] = y_x E[1 / (y_x + S)], S the sum over the 7 others, and 1/z = ∫_0^∞ e^{-tz} dt gives
    E[w_1 | x] = y_x ∫_0^∞ e^{-t y_x} M(t)^7 dt with M(t) = Σ_x' P(x') e^{-t y_x'} (all 4096 architectures):
    E[ĝ] = 8 Σ_x P(x) E[w_1 | x] onehot(x) - p. Trapezoid rule in log t; Σ_x 8 P(x) E[w_1|x] = 1 checks it."""
    prob = p[torch.arange(E), ARCHS].prod(-1)
    loss = c[torch.arange(E), ARCHS].sum(-1)
    y = torch.exp(loss - loss.min())
    log_t = torch.linspace(math.log(1e-9), math.log(80.0), 3000, dtype=torch.float64)
    t = log_t.exp()
    decay = torch.exp(-t[None, :] * y[:, None])                         # (4096, T)
    moment = (prob[:, None] * decay).sum(0)
    weight = buffer * prob * y * torch.trapezoid(t * decay * moment ** (buffer - 1), log_t, dim=-1)
    assert abs(float(weight.sum()) - 1.0) < 1e-5
    onehot = torch.nn.functional.one_hot(ARCHS, K).double()
    return (weight[:, None, None] * onehot).sum(0) - p, torch.zeros_like(p)


def relaxed_expectation(theta, p, c, tau: float, smoothed: bool = True, draws: int = 200_000, seed: int = 1):
    """E_G[∂<c, z>/∂θ] for the Gumbel-softmax z = softmax((s + G)/τ), G = -log(-log u): the expectation of the
    relaxed gradient (a biased estimator of ∇E[L]) by the chain rule, by hand, over ``draws`` noise samples.
    ``smoothed`` (the AdvantageNAS code): s = log(softmax(θ) + 0.001), u ~ U[0.001, 0.999]; else (SNAS's own
    code) s = θ, u ~ U(0, 1). Returns (mean, standard error)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(draws, E, K, generator=generator, dtype=torch.float64)
    u = u.clamp(0.001, 0.999) if smoothed else u.clamp_min(1e-300)
    score = torch.log(p + SMOOTHING) if smoothed else theta
    z = torch.softmax((score - torch.log(-torch.log(u))) / tau, -1)
    grad = z * (c - (z * c).sum(-1, keepdim=True)) / tau               # ∂<c, z>/∂s
    if smoothed:
        dp = grad / (p + SMOOTHING)
        grad = p * (dp - (p * dp).sum(-1, keepdim=True))
    return grad.mean(0), grad.std(0) / math.sqrt(draws)


def gdas_expectation(theta, p, c):
    return relaxed_expectation(theta, p, c, 10.0 - 9.9 * PROGRESS)          # τ = 10 → 0.1 linearly


def snas_expectation(theta, p, c):
    return relaxed_expectation(theta, p, c, 0.5 * (1.0 + math.cos(math.pi * PROGRESS)))   # cosine 1 → 0


def snas_paper_expectation(theta, p, c):
    return relaxed_expectation(theta, p, c, max(0.03, 1.0 - 0.97 * PROGRESS), smoothed=False)  # linear 1 → 0.03


def proxyless_expectation(theta, p, c):
    """The pair (a, b) is Gumbel-top-2 on log(p + 0.001): P(a then b) = w_a/W w_b/(W - w_a), w = p + 0.001
    (the uniforms' clipping moves these by < 3e-4, measured with 4M draws: far below the test's resolution).
    On the pair, ĝ_m = q_m (c_m - q_a c_a - q_b c_b), q = softmax of θ over {a, b}; elsewhere 0."""
    w = p + SMOOTHING
    total = w.sum(-1)
    out = torch.zeros_like(p)
    for i in range(E):
        for a, b in itertools.permutations(range(K), 2):
            chance = w[i, a] / total[i] * w[i, b] / (total[i] - w[i, a])
            q = torch.softmax(theta[i, [a, b]], -1)
            mean = q[0] * c[i, a] + q[1] * c[i, b]
            out[i, a] += chance * q[0] * (c[i, a] - mean)
            out[i, b] += chance * q[1] * (c[i, b] - mean)
    return out, torch.zeros_like(p)


def nasp_expectation(theta, p, c):
    """NASP's arch step runs every op weighted by onehot(argmax θ): θ's gradient is dL/da = c, deterministic."""
    return c.clone(), torch.zeros_like(p)


def ranking_expectation(theta, p, c):
    """ASNG, λ = 2: ĝ = ½(x_best - x_worst) has E[ĝ] = Σ_x P(x) w(x)(x - θ), w(x) = P(L(x') > L(x)) -
    P(L(x') < L(x)) (all 4096 architectures; no two losses tie)."""
    prob = p[torch.arange(E), ARCHS].prod(-1)
    loss = c[torch.arange(E), ARCHS].sum(-1)
    order = loss.argsort()
    below = torch.zeros_like(prob)
    below[order] = torch.cumsum(prob[order], 0) - prob[order]           # P(L(x') < L(x))
    w = 1.0 - below - prob - below                                     # P(L' > L) - P(L' < L)
    onehot = torch.nn.functional.one_hot(ARCHS, K).double()
    return (prob[:, None, None] * w[:, None, None] * (onehot - p)).sum(0), torch.zeros_like(p)


# --- documented sampling distributions of sample.arch, per decision ---------------------------------------
def categorical(theta, p):
    return p


def gumbel_argmax(theta, p):
    """Gumbel-argmax on log(p + 0.001): op k with probability (p_k + 0.001) / (1 + 0.004)."""
    return (p + SMOOTHING) / (1.0 + K * SMOOTHING)


def argmax(theta, p):
    return torch.nn.functional.one_hot(theta.argmax(-1), K).double()


def uniform(theta, p):
    return torch.full((E, K), 1.0 / K, dtype=torch.float64)


@dataclass(frozen=True)
class Reference:
    gradient: Callable | None     # (θ, p, c) -> (E[θ's gradient], the reference's standard error); None: no θ
    marginals: dict               # phase -> (θ, p) -> each decision's distribution of sample.arch ("arch":
                                  # the samples of the arch updates, from the Monte-Carlo run)
    draws: int                    # gradients read (PARSEC: θ updates; each needs 8 arch steps)
    theta: torch.Tensor = THETA   # what the test puts in θ
    hparams: dict = field(default_factory=dict)
    reader: str = "theta"         # "theta": SGD lr 1 on θ; "asng": ASNG's normalised step, rescaled


ASNG_REFERENCE = Reference(ranking_expectation, {"arch": categorical}, 2500, hparams={"delta_init": 0.01},
                           reader="asng")
REFERENCES: dict[str, Reference] = {
    "advantage": Reference(score_gradient, {"arch": categorical, "weight": categorical}, 1500),
    "advantage_wb": Reference(score_gradient, {"arch": categorical}, 1500),
    "reinforce": Reference(reinforce_expectation, {"arch": categorical}, 2500),
    "parsec": Reference(parsec_expectation, {"arch": categorical}, 600),
    "gdas": Reference(gdas_expectation, {"arch": gumbel_argmax, "warmup": gumbel_argmax}, 1000),
    "snas_relaxed": Reference(snas_expectation, {"arch": gumbel_argmax}, 1500),
    "proxyless": Reference(proxyless_expectation, {"arch": gumbel_argmax}, 1500),
    "nasp": Reference(nasp_expectation, {"arch": argmax, "weight": argmax, "warmup": gumbel_argmax}, 1500,
                      theta=THETA_BOX),
    "darts": Reference(score_gradient, {"arch": argmax}, 20),   # deterministic: softmax's Jacobian, exactly
    # SNAS itself, without its resource term (level "none"): s = θ, arch = argmax(θ + G) ~ softmax(θ)
    "snas": Reference(snas_paper_expectation, {"arch": categorical}, 1500, hparams={"level": "none"}),
    "random": Reference(None, {"arch": uniform, "weight": uniform}, 1500),
    # per-cell sampling; ``arch`` records the first cell's child: uniform on the 4-op space (no 'none' to redraw)
    "abs_uniform": Reference(None, {"arch": uniform, "weight": uniform}, 1500),
    "asng": ASNG_REFERENCE,
    "sng": ASNG_REFERENCE,
}


def reference(name: str) -> Reference:
    if name not in REFERENCES:
        pytest.fail(f"strategy {name!r} has no entry in REFERENCES (tests/test_contract.py): add the expectation "
                    "of its θ-gradient for an affine loss and the distribution of its samples")
    return REFERENCES[name]


# --- the Monte-Carlo runs ----------------------------------------------------------------------------------
def readable(name: str, ref: Reference):
    """The strategy at the test's distribution, set up so that θ's change is minus the estimated gradient."""
    probe = make(name)
    if isinstance(probe, ThetaStrategy):
        s = make(name, lr=1.0, weight_decay=0.0, grad_clip=math.inf, **ref.hparams)
        with torch.no_grad():
            s.theta.copy_(ref.theta)
        s.optimizer = torch.optim.SGD([s.theta], lr=1.0)
        return s
    s = make(name, **ref.hparams)
    if ref.reader == "asng":
        s.state["theta"] = torch.softmax(ref.theta.double(), -1).numpy()
    return s


def read_theta_gradients(s) -> list[torch.Tensor]:
    """Wrap the real ``apply_gradient`` (mask, decay 0, no clip, SGD lr 1): record θ_before - θ_after, then
    put θ back so that every step sees the same distribution."""
    records = []
    apply = s.apply_gradient

    def spy(grad):
        before = s.theta.detach().clone()
        apply(grad)
        records.append((before - s.theta.detach()).double().cpu())
        with torch.no_grad():
            s.theta.copy_(before)

    s.apply_gradient = spy
    return records


def asng_tell_and_read(s, samples, losses) -> torch.Tensor:
    """ASNG steps θ by δ ĝ/‖ĝ‖_F (restriction inactive at δ = 0.01): the real step times ‖ĝ‖_F/δ is ĝ, with
    ‖ĝ‖_F² = Σ ĝ²/θ computed from the pair (|ĝ| = ½|x_0 - x_1| whatever the ranking). State put back after."""
    before = {k: np.array(v, copy=True) for k, v in s.state.items()}
    delta = s.step_size
    s.tell(samples, losses, None, "arch")
    moved = s.state["theta"] - before["theta"]
    half = 0.5 * (samples[0].info["x"] - samples[1].info["x"])
    norm = math.sqrt(float((half ** 2 / before["theta"]).sum()))
    s.state = before
    return torch.from_numpy(moved * norm / delta)


@dataclass
class Run:
    gradients: torch.Tensor | None    # (draws, E, K)
    counts: torch.Tensor              # (E, K) how often each value was in sample.arch in arch steps
    asked: int


@functools.lru_cache(maxsize=None)
def monte_carlo(name: str) -> Run:
    """``ref.draws`` arch steps at θ = ``ref.theta`` (more where a strategy updates less often, as PARSEC),
    each followed by putting θ back; records θ's gradients and the sampled values."""
    ref = reference(name)
    s = readable(name, ref)
    records = []
    if ref.gradient is not None and ref.reader == "theta":
        if not isinstance(s, ThetaStrategy):
            pytest.fail(f"{name}: the 'theta' reader needs a ThetaStrategy; give REFERENCES[{name!r}] a reader")
        records = read_theta_gradients(s)
    counts, asked = torch.zeros(E, K, dtype=torch.float64), 0
    for steps in itertools.count():
        if (len(records) if ref.gradient is not None else steps) >= ref.draws:
            break
        if steps > 50 * ref.draws:
            pytest.fail(f"{name}: {steps} arch steps gave only {len(records)} θ updates")
        s.set_schedule(1.0, PROGRESS)
        samples = s.ask("weight" if s.arch_batch == "same" else "arch")   # as the trainer asks
        for sample in samples:
            counts[torch.arange(E), torch.tensor(sample.arch)] += 1
            asked += 1
        losses = [affine_loss(x) for x in samples]
        if ref.reader == "asng":
            records.append(asng_tell_and_read(s, samples, losses))
        elif ref.gradient is not None:
            grads = [affine_gate_grad(s, x) for x in samples] if s.needs_gate_grad else None
            s.tell(samples, losses, grads, "arch")
    return Run(torch.stack(records) if records else None, counts, asked)


def distribution(ref: Reference) -> tuple[torch.Tensor, torch.Tensor]:
    theta = ref.theta.double()
    return theta, torch.softmax(theta, -1)


# --- the tests ---------------------------------------------------------------------------------------------
def test_every_registered_strategy_has_a_reference():
    missing = sorted(set(NAMES) - set(REFERENCES))
    assert not missing, f"add these strategies to REFERENCES in tests/test_contract.py: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_ask_gives_valid_samples_and_only_arch_steps_move_the_distribution(name):
    s = make(name, seed=1)
    space = s.space
    mask = space.choice_mask()
    for phase in ("warmup", "weight", "arch"):
        before = s.probabilities()
        before = None if before is None else before.clone()
        for _ in range(3):
            samples = step(s, phase)
            assert isinstance(samples, list) and samples and all(isinstance(x, Sample) for x in samples)
            for x in samples:
                assert space.check(x.arch) == tuple(x.arch)
                if x.gates is not None:
                    assert x.gates.shape == (E, K) and torch.all(x.gates[~mask] == 0)
                if x.active is not None:
                    cells = x.active if isinstance(x.active[0][0], list) else [x.active]  # per-cell sampling
                    assert all(len(a) == E and all(0 <= k < K for ops in a for k in ops) for a in cells)
                if x.unit:     # unit gates: exactly 1 on the ops that run, 0 elsewhere
                    assert torch.equal(x.gates.cpu(), ran(x))
        if phase != "arch" and before is not None:
            assert torch.equal(s.probabilities(), before), f"a {phase} tell moved the distribution"
    probs = s.probabilities()
    if probs is not None:
        assert torch.allclose(probs.sum(-1).double(), torch.ones(E, dtype=torch.float64), atol=1e-6)
    if not s.derive_by_validation:   # else the trainer ranks sampled children
        assert space.check(s.derive()) == s.derive()


def same(a, b) -> bool:
    """Exact equality of nested state: tensors, arrays, dicts, lists and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, np.asarray(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def same_samples(xs, ys) -> bool:
    return len(xs) == len(ys) and all(
        x.arch == y.arch and x.active == y.active and x.unit == y.unit and x.inactive_grad == y.inactive_grad
        and same(x.gates, y.gates) and same(x.info, y.info) for x, y in zip(xs, ys))


def drive(s, start: int, stop: int) -> None:
    """Iterations as the trainer runs them (2 warm-up ones first), with changing costs and schedules."""
    for i in range(start, stop):
        if i >= 2:
            s.set_schedule(1.0 - i / 30, i / 15)
        iteration(s, searching=i >= 2, cost=COST.roll(i, 1) * (1.0 + 0.2 * i))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_resume(name):
    original = make(name, seed=5)
    fresh = make(name, seed=5)
    drive(original, 0, 5)       # PARSEC: 3 of 8 samples buffered at the checkpoint
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make(name, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert same(restored.state_dict(), original.state_dict())
    drive(original, 5, 12)      # crosses a PARSEC update
    drive(restored, 5, 12)
    if original.updates_theta:
        assert not same(original.state_dict(), fresh.state_dict()), "the arch steps changed nothing"
    assert same(restored.state_dict(), original.state_dict())
    if isinstance(original, ThetaStrategy):
        assert torch.equal(restored.theta, original.theta)
    for phase in ("arch", "weight", "warmup"):
        assert same_samples(restored.ask(phase), original.ask(phase)), phase
    if not original.derive_by_validation:
        assert restored.derive() == original.derive()


@pytest.mark.parametrize("name", NAMES)
def test_monte_carlo_mean_of_theta_gradient(name):
    ref = reference(name)
    if ref.gradient is None:
        pytest.skip(f"{name} has no θ to estimate a gradient for")
    theta, p = distribution(ref)
    expected, reference_se = ref.gradient(theta, p, COST)
    run = monte_carlo(name)
    mean = run.gradients.mean(0)
    se = (run.gradients.var(0) / len(run.gradients) + reference_se ** 2).sqrt()
    z = (mean - expected).abs() / (se + 1e-9)
    assert torch.all((mean - expected).abs() <= TOL * se + 1e-6), (
        f"{name}: Monte-Carlo mean of {len(run.gradients)} gradients\n{mean}\nexpected\n{expected}\nz\n{z}")
    if se.max() > 0:   # the run can tell a doubled or zeroed estimator from the right one
        assert expected.abs().max() >= POWER * se.max(), (expected.abs().max(), se.max())


@pytest.mark.parametrize("name", NAMES)
def test_sampling_frequencies(name):
    ref = reference(name)
    theta, p = distribution(ref)
    for phase, law in ref.marginals.items():
        if phase == "arch":
            run = monte_carlo(name)
            counts, n = run.counts, run.asked
        else:
            s = readable(name, ref)
            counts, n = torch.zeros(E, K, dtype=torch.float64), 0
            for _ in range(ref.draws):
                for sample in s.ask(phase):
                    counts[torch.arange(E), torch.tensor(sample.arch)] += 1
                    n += 1
        expected = law(theta, p)
        freq = counts / n
        se = (expected * (1 - expected) / n).sqrt()
        assert torch.all((freq - expected).abs() <= TOL * se + 1e-9), (
            f"{name} {phase}: frequencies of {n} draws\n{freq}\nexpected\n{expected}")
