import io
import math

import pytest
import torch

from oneshot import strategies
from oneshot.errors import UserError
from oneshot.spaces import create_space
from oneshot.spaces.base import Categorical, SearchSpace
from oneshot.spaces.darts import DARTSSpace
from oneshot.strategies import snas  # noqa: F401  (registers "snas")
from oneshot.strategies.snas import (concrete_log_prob, edge_penalty, gumbel_noise, snas_alpha_gradient,
                                     snas_temperature)

EXACT = dict(weight_decay=0.0, grad_clip=1e9)   # θ's gradient left as the estimator made it


def make(space, **hp):
    return strategies.create("snas", space, seed=3, **{**EXACT, **hp})


# --- temperature ---------------------------------------------------------------------------------------------
def test_temperature_falls_linearly_from_one_to_0_03():
    assert snas_temperature(0.0) == 1.0
    assert snas_temperature(0.5) == pytest.approx(0.515)
    assert snas_temperature(1.0) == pytest.approx(0.03)
    assert snas_temperature(0.25, horizon=0.5) == pytest.approx(0.515)
    assert snas_temperature(0.75, horizon=0.5) == pytest.approx(0.03)     # constant after the horizon


def test_strategy_uses_the_schedule_and_keeps_alpha_lr_constant():
    s = make(create_space("nb201"), tau_horizon=0.5)
    taus = []
    for progress in (0.0, 0.25, 0.5, 0.9):
        s.set_schedule(0.1, progress)                 # the trainer's cosine lr_scale: ignored, as in the SNAS code
        taus.append(s.ask("arch")[0].info["tau"])
    assert taus == pytest.approx([1.0, 0.515, 0.03, 0.03])
    assert s.optimizer.param_groups[0]["lr"] == 3e-4


# --- the search gradient (spec §1) --------------------------------------------------------------------------
def test_alpha_gradient_is_the_credit_assignment_formula_on_a_tiny_supernet():
    space = DARTSSpace(cells=3)
    torch.manual_seed(0)
    net = space.build_supernet(input_shape=(3, 8, 8), num_outputs=4, channels=4)
    s = make(space, level="none")
    s.set_schedule(1.0, 0.5)
    (sample,) = s.ask("arch")
    tau = sample.info["tau"]
    z = sample.gates.clone()
    assert sample.arch == tuple(z.argmax(-1).tolist()) and sample.active is None    # dense, all ops run
    gates = sample.gates.clone().requires_grad_()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 3])
    torch.nn.functional.cross_entropy(net(x, gates=gates), y).backward()
    score = gates.grad                                # s_e^k = <dL/dx_j, O_e^k(x_i)>, summed over the cells
    s.tell([sample], [0.0], [score], "arch")
    expected = (z / tau) * (score - (z * score).sum(-1, keepdim=True))
    assert s.theta.grad.abs().max() > 1e-4
    assert torch.allclose(s.theta.grad, expected, rtol=1e-4, atol=1e-9)
    assert torch.allclose(snas_alpha_gradient(z, score, tau), expected)


def test_alpha_gradient_formula_equals_autograd_through_the_relaxation():
    torch.manual_seed(1)
    a = torch.randn(5, 8, requires_grad=True)
    noise, tau, score = torch.randn(5, 8), 0.37, torch.randn(5, 8)
    z = torch.softmax((a + noise) / tau, -1)
    (grad,) = torch.autograd.grad(z, a, score)
    assert torch.allclose(snas_alpha_gradient(z.detach(), score, tau), grad, atol=1e-6)


# --- resource estimators (spec §2) --------------------------------------------------------------------------
ONE_CELL = torch.ones(1, dtype=torch.float64)
ONE_RESOURCE = torch.ones(1, dtype=torch.float64)


def per_sample_gradients(a: torch.Tensor, noise: torch.Tensor, tau: float, costs: torch.Tensor, estimator: str,
                         log_penalty: bool) -> torch.Tensor:
    """(N, 1, K): each sample's estimate of d/da E_q[penalty(Z)] for one edge."""
    a_n = a.expand(noise.shape).clone().requires_grad_()
    mask = torch.ones(noise.shape, dtype=torch.bool)
    if estimator == "reparametrization":
        z = torch.softmax((a_n + noise) / tau, -1)
        edge_penalty(z, costs, ONE_CELL, ONE_RESOURCE, log_penalty).sum().backward()
    else:
        log_z = torch.log_softmax((a_n.detach() + noise) / tau, -1)
        reward = edge_penalty(log_z.exp(), costs, ONE_CELL, ONE_RESOURCE, log_penalty)
        (concrete_log_prob(a_n, log_z, tau, mask) * reward).sum().backward()
    return a_n.grad


def binary_concrete_gradient(a, tau, c, log_penalty):
    """d/da E[f(c0 z + c1 (1 - z))] for the 2-choice Concrete: z = σ((a0 - a1 + L)/τ), L ~ Logistic(0, 1);
    by quadrature and a central difference in a0 - a1."""
    from scipy.integrate import quad

    def expectation(delta):
        def integrand(l):
            z = 1.0 / (1.0 + math.exp(-(delta + l) / tau))
            cost = c[0] * z + c[1] * (1 - z)
            value = math.log(max(cost, 1.0)) if log_penalty else cost
            return value * 0.25 / math.cosh(l / 2) ** 2          # the logistic density
        return quad(integrand, -60, 60, limit=800, epsabs=1e-13, epsrel=1e-12)[0]

    delta, h = float(a[0] - a[1]), 1e-4
    d = (expectation(delta + h) - expectation(delta - h)) / (2 * h)
    return torch.tensor([d, -d], dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["reparametrization", "policy_gradient"])
@pytest.mark.parametrize("log_penalty", [True, False])
def test_estimators_are_unbiased_for_the_gradient_of_the_expected_cost(estimator, log_penalty):
    """Monte Carlo, N = 100 000, against the exact binary-Concrete gradient; tolerance 5 standard errors, which
    is asserted to be below a quarter of the gradient, so a doubled or sign-flipped estimator fails."""
    g = torch.Generator().manual_seed(0)
    a, tau = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5
    c = (0.0, 40.0) if log_penalty else (3.0, 10.0)              # 'none'-like op and a conv-like op
    costs = torch.tensor(c, dtype=torch.float64).view(1, 1, 1, 2)
    noise = gumbel_noise((100_000, 1, 2), g).double()
    grads = per_sample_gradients(a, noise, tau, costs, estimator, log_penalty)[:, 0]
    mean, sem = grads.mean(0), grads.std(0) / math.sqrt(len(grads))
    exact = binary_concrete_gradient(a, tau, c, log_penalty)
    assert torch.all(5 * sem < 0.25 * exact.abs()), (sem, exact)
    assert torch.all((mean - exact).abs() < 5 * sem), (mean, exact, sem)


def test_policy_gradient_and_reparametrization_agree_on_eight_ops():
    """Both estimate d/da E_q[Σ_g w_g log max(C_g, 1)] (two cells, 8 ops, τ = 0.5): N = 200 000, 5 combined
    SEMs (about 0.026, under half of each large entry, so a doubled or flipped estimate fails)."""
    g = torch.Generator().manual_seed(1)
    a = torch.tensor([1.5, 0.2, -0.3, 0.8, 1.0, 0.1, -0.5, 0.4], dtype=torch.float64)
    costs = torch.tensor([[0, 9, 9, 2, 800, 1700, 400, 800], [0, 2, 2, 1, 100, 200, 60, 90]],
                         dtype=torch.float64).view(1, 2, 1, 8)
    weight = torch.tensor([1 / 6, 1 / 2], dtype=torch.float64)
    noise = gumbel_noise((200_000, 1, 8), g).double()
    tau = 0.5
    means, sems = [], []
    for estimator in ("reparametrization", "policy_gradient"):
        a_n = a.expand(noise.shape).clone().requires_grad_()
        if estimator == "reparametrization":
            edge_penalty(torch.softmax((a_n + noise) / tau, -1), costs, weight, ONE_RESOURCE, True).sum().backward()
        else:
            log_z = torch.log_softmax((a + noise) / tau, -1)
            reward = edge_penalty(log_z.exp(), costs, weight, ONE_RESOURCE, True)
            (concrete_log_prob(a_n, log_z, tau, torch.ones(noise.shape, dtype=torch.bool)) * reward).sum().backward()
        means.append(a_n.grad[:, 0].mean(0))
        sems.append(a_n.grad[:, 0].std(0) / math.sqrt(len(noise)))
    tolerance = 5 * (sems[0] ** 2 + sems[1] ** 2).sqrt()
    big = means[0].abs() > 0.15
    assert big.sum() >= 3 and torch.all(tolerance[big] < 0.5 * means[0].abs()[big])
    assert torch.all((means[0] - means[1]).abs() < tolerance), (means, tolerance)


@pytest.mark.parametrize("log_penalty", [True, False])
def test_discrete_estimator_is_the_analytic_gradient(log_penalty):
    a = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.0, 9.0, 300.0, 40.0], dtype=torch.float64)
    z = torch.softmax(a, -1).view(1, 4)
    edge_penalty(z, c.view(1, 1, 1, 4), ONE_CELL, ONE_RESOURCE, log_penalty).sum().backward()
    p = torch.softmax(a.detach(), -1)
    expected = p * (c - (p * c).sum())                  # d/da Σ_k p_k c_k
    if log_penalty:
        expected = expected / (p * c).sum()             # d/da log Σ_k p_k c_k (the cost is > 1 here)
    assert torch.allclose(a.grad, expected)


def test_concrete_log_density_integrates_to_one_for_two_choices():
    # n = 2: q(z) over the 1-simplex; ∫_0^1 q(z, 1 - z) dz = 1 for any a, τ
    a, tau = torch.tensor([[0.7, -0.4]], dtype=torch.float64), 0.6
    z = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    log_z = torch.stack([z.log(), (1 - z).log()], -1)
    density = concrete_log_prob(a.expand(len(z), 2), log_z, tau, torch.ones(len(z), 2, dtype=torch.bool)).exp()
    assert torch.trapezoid(density, z).item() == pytest.approx(1.0, abs=2e-3)


# --- the strategy's glue ---------------------------------------------------------------------------------------
class CostSpace(SearchSpace):
    """Two decisions of three choices, costs for two 'cells' (weights 1/2, 1)."""

    name = "costs"

    def __init__(self):
        super().__init__([Categorical("e0", ("none", "a", "b")), Categorical("e1", ("none", "a", "b"))])

    def resource_table(self, resource, channels=16, cells=None, input_size=32):
        costs = torch.tensor([[[0, 20, 50], [0, 5, 30]], [[0, 8, 3], [0, 40, 7]]], dtype=torch.float64)
        return costs * channels / 16, torch.tensor([0.5, 1.0], dtype=torch.float64)


COST_COSTS, COST_WEIGHT = CostSpace().resource_table("size")


def hand_penalty_grad_z(z):
    """d/dz of Σ_g w_g Σ_e log max(Σ_k z_ek c_gek, 1): Σ_g w_g c_gek / C_ge where C_ge > 1."""
    c = torch.einsum("ek,gek->ge", z.double(), COST_COSTS)
    return torch.einsum("g,gek->ek", COST_WEIGHT * 1, COST_COSTS / c[..., None] * (c > 1)[..., None]).float()


def test_reparametrization_adds_the_penalty_to_the_loss_so_it_joins_dL_dZ():
    s = make(CostSpace(), estimator="reparametrization", resource="size", eta=0.01)
    (sample,) = s.ask("arch")
    gates = sample.gates.clone().requires_grad_()
    s.loss_term(sample, gates).backward()
    assert torch.allclose(gates.grad, 0.01 * hand_penalty_grad_z(sample.gates), atol=1e-7)
    score = torch.randn(2, 3) + gates.grad              # what the trainer's backward hands over
    s.tell([sample], [0.0], [score], "arch")
    z, tau = sample.gates, sample.info["tau"]
    assert torch.allclose(s.theta.grad, z / tau * (score - (z * score).sum(-1, keepdim=True)), atol=1e-6)


def test_discrete_estimator_in_tell():
    s = make(CostSpace(), estimator="discrete", resource="size", eta=0.01)
    (sample,) = s.ask("arch")
    assert s.loss_term(sample, sample.gates.clone().requires_grad_()) is None
    p = torch.softmax(s.theta.detach(), -1)
    s.tell([sample], [0.0], [torch.zeros(2, 3)], "arch")
    g = 0.01 * hand_penalty_grad_z(p)                   # dP/dp, then through the softmax
    assert torch.allclose(s.theta.grad, p * (g - (p * g).sum(-1, keepdim=True)), atol=1e-7)


def test_policy_gradient_estimator_in_tell_detaches_z():
    s = make(CostSpace(), estimator="policy_gradient", resource="size", eta=0.01)
    (sample,) = s.ask("arch")
    noise, tau = sample.info["noise"], sample.info["tau"]
    a = s.theta.detach().clone().requires_grad_()
    log_z = torch.log_softmax((a.detach() + noise) / tau, -1)
    c = torch.einsum("ek,gek->ge", log_z.exp().double(), COST_COSTS)
    reward = 0.01 * (COST_WEIGHT[:, None] * c.clamp_min(1).log()).sum(0).float()   # per edge
    (concrete_log_prob(a, log_z, tau, torch.ones(2, 3, dtype=torch.bool)) * reward).sum().backward()
    s.tell([sample], [0.0], [torch.zeros(2, 3)], "arch")
    assert s.theta.grad.abs().max() > 1e-4
    assert torch.allclose(s.theta.grad, a.grad, atol=1e-6)


def test_no_resource_term_without_a_cost_table_or_at_level_none():
    s = make(create_space("nb201"), level="moderate")
    assert s.costs is None and "no cost table" in s.resource_note
    (sample,) = s.ask("arch")
    assert s.loss_term(sample, sample.gates.clone().requires_grad_()) is None
    s.tell([sample], [1.0], [torch.randn(6, 4)], "arch")
    assert make(DARTSSpace(), level="none").costs is None


def test_levels_and_cell_normalisation():
    assert [make(CostSpace(), level=lv).eta for lv in ("none", "mild", "moderate", "aggressive")] == \
        [0.0, 1.5e-3, 5e-3, 1.5e-2]
    assert make(CostSpace(), level="aggressive", eta=0.2).eta == 0.2
    assert torch.equal(make(CostSpace(), cell_norm=False).cell_weight, torch.ones(2))
    s = make(DARTSSpace(), cost_cells=11, cost_channels=8)
    assert s.costs.shape == (3, 11, 28, 8)           # size, flops, mac
    assert s.cell_weight.tolist() == pytest.approx([1 / 9] * 3 + [1 / 2] + [1 / 9] * 3 + [1 / 2] + [1 / 9] * 3)


def test_initial_logits_and_optimiser():
    s = strategies.create("snas", DARTSSpace(), seed=0)
    assert abs(s.theta.mean().item() - 1.0) < 0.003 and 0.007 < s.theta.std().item() < 0.013
    group = s.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], s.weight_decay, s.grad_clip) == (3e-4, (0.5, 0.999), 1e-3, 10.0)
    assert s.arch_batch == "same" and s.needs_gate_grad
    # clipping at norm 10 comes before the coupled L2 (Adam's weight_decay), as in the code
    with torch.no_grad():
        s.theta.fill_(1000.0)
    grad = torch.zeros(28, 8)
    grad[0, 0] = 1e4
    s.apply_gradient(grad)
    assert s.theta.grad[0, 0].item() == pytest.approx(10.0 + 1.0, rel=1e-5)     # clipped to 10, plus 1e-3 * 1000
    assert s.theta.grad[0, 1].item() == pytest.approx(1.0, rel=1e-5)


def test_derivation_edge_all_by_default_top2_on_request():
    space = DARTSSpace()
    arch = space.from_string("darts_v2")
    logits = torch.zeros(28, 8)
    logits[torch.arange(28), torch.tensor(arch)] = 1.0
    logits[:, 0] = 2.0                                   # 'none' strongest everywhere
    edge_all, top2 = make(space), make(space, derive="top2")
    for s in (edge_all, top2):
        with torch.no_grad():
            s.theta.copy_(logits)
    assert edge_all.derive() == (0,) * 28
    assert top2.derive() == arch


def test_state_dict_round_trip_gives_the_same_next_steps():
    def run(s, steps, start):
        for i in range(start, start + steps):
            s.set_schedule(1.0, i / 10)
            (sample,) = s.ask("arch")
            grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(i))
            s.tell([sample], [1.0], [grad], "arch")
        return s

    space = create_space("nb201")
    a = run(make(space), 4, 0)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(space)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    run(a, 3, 4)
    run(b, 3, 4)
    assert torch.equal(a.theta, b.theta)
    sa, sb = a.ask("arch")[0], b.ask("arch")[0]
    assert sa.arch == sb.arch and torch.equal(sa.gates, sb.gates) and sa.info["tau"] == sb.info["tau"]


@pytest.mark.parametrize("option, message", [
    ({"level": "extreme"}, "snas: unknown level 'extreme'; choose from none, mild, moderate, aggressive"),
    ({"estimator": "reinforce"}, "snas: unknown estimator 'reinforce'"),
    ({"resource": "latency"}, "snas: unknown resource 'latency'"),
    ({"derive": "top3"}, "snas: unknown derivation 'top3'"),
    ({"cost_depth": 3}, "strategy 'snas' has no hyper-parameter 'cost_depth'"),
    ({"tau_min": 2.0}, "tau_min <= tau0"),
])
def test_bad_names_are_refused(option, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as info:
        strategies.create("snas", DARTSSpace(), **option)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="has no top-2 rule"):
        strategies.create("snas", create_space("nb201"), derive="top2")
