import math

import pytest
import torch

from oneshot import strategies
from oneshot.errors import UserError
from oneshot.spaces import create_space
from oneshot.strategies.advantage import advantage_gradient, none_advantage
from oneshot.strategies.reinforce import reinforce_gradient

LOG2 = math.log(2.0)


def tiny_probs():
    # row 0: logits (0, ln 2, 0) -> p = (1/4, 1/2, 1/4); row 1: uniform thirds
    theta = torch.tensor([[0.0, LOG2, 0.0], [0.0, 0.0, 0.0]])
    return torch.softmax(theta, -1)


def test_advantage_gradient_hand_values():
    p = tiny_probs()
    a = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    gate_grad = torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, -0.3]])
    g = advantage_gradient(p, a, gate_grad)
    expected = torch.tensor([[-0.2, 0.4, -0.2], [0.1, 0.1, -0.2]])  # 0.8*(a-p); -0.3*(a-p)
    assert torch.allclose(g, expected, atol=1e-7)
    # with a baseline b = (0.5, -0.1): advantages 0.3 and -0.2
    g = advantage_gradient(p, a, gate_grad, torch.tensor([[0.5], [-0.1]]))
    assert torch.allclose(g, torch.tensor([[-0.075, 0.15, -0.075], [2 / 30, 2 / 30, -4 / 30]]), atol=1e-7)


def test_reinforce_gradient_hand_values():
    p = tiny_probs()
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g = reinforce_gradient(p, a, 2.0)
    assert torch.allclose(g, torch.tensor([[1.5, -1.0, -0.5], [-2 / 3, 4 / 3, -2 / 3]]), atol=1e-6)


def test_none_rule_gives_none_the_worst_remembered_advantage():
    a1 = torch.tensor([[0.0, 1.0, 0.0]])           # op 1 sampled, 'none' is op 0
    m = None
    g, m = none_advantage(torch.tensor([[0.0, 0.4, 0.0]]), a1, m, 0)
    assert torch.allclose(m, torch.tensor([[0.0, 0.4, 0.0]]))
    assert g[0, 0] == pytest.approx(0.4)
    a2 = torch.tensor([[0.0, 0.0, 1.0]])
    g, m = none_advantage(torch.tensor([[0.0, 0.0, 2.0]]), a2, m, 0)
    assert torch.allclose(m, torch.tensor([[0.0, 0.4, 0.05 * 2.0]]))  # only the sampled entry moves
    a3 = torch.tensor([[1.0, 0.0, 0.0]])           # 'none' sampled: its d becomes max(M) = 0.4
    g, m = none_advantage(torch.zeros(1, 3), a3, m, 0)
    assert advantage_gradient(torch.full((1, 3), 1 / 3), a3, g)[0, 0] == pytest.approx(0.4 * 2 / 3)


def exact_gradient(p, c):
    """d/dθ of E_a[sum_i <a_i, c_i>] with a_i ~ Cat(softmax θ_i): p_ij (c_ij - sum_k p_ik c_ik)."""
    return p * (c - (p * c).sum(-1, keepdim=True))


@pytest.mark.parametrize("estimator", ["advantage", "advantage_wb", "reinforce"])
def test_monte_carlo_mean_equals_exact_gradient_for_affine_loss(estimator):
    torch.manual_seed(0)
    theta = torch.randn(3, 4)
    p = torch.softmax(theta, -1)
    c = torch.randn(3, 4)          # L(a) = sum_i <a_i, c_i> + 1: affine in the gates, dL/da = c
    n = 200_000
    k = torch.multinomial(p.repeat(n, 1), 1).view(n, 3)
    a = torch.nn.functional.one_hot(k, 4).float()               # (n, 3, 4)
    if estimator == "advantage":
        g = advantage_gradient(p, a, c.expand(n, 3, 4))
    elif estimator == "advantage_wb":  # a baseline that does not depend on the current sample adds no bias
        g = advantage_gradient(p, a, c.expand(n, 3, 4), torch.tensor([[0.7], [-0.4], [1.5]]))
    else:
        loss = (a * c).sum((1, 2)) + 1.0
        g = (loss - 1.0)[:, None, None] * (a - p)               # baseline = the constant: still unbiased
    mean, sem = g.mean(0), g.std(0) / math.sqrt(n)
    exact = exact_gradient(p, c)
    assert torch.all((mean - exact).abs() < 5 * sem + 1e-4), (mean, exact)


def test_advantage_has_lower_variance_than_reinforce_on_affine_loss():
    torch.manual_seed(1)
    p = torch.softmax(torch.randn(6, 4), -1)
    c = torch.randn(6, 4)
    n = 50_000
    a = torch.nn.functional.one_hot(torch.multinomial(p.repeat(n, 1), 1).view(n, 6), 4).float()
    g_adv = advantage_gradient(p, a, c.expand(n, 6, 4))
    g_rf = (a * c).sum((1, 2))[:, None, None] * (a - p)
    assert g_adv.var(0).sum() < 0.5 * g_rf.var(0).sum()


def make(name, **hp):
    space = create_space("nb201")
    if name != "random":
        hp = dict(weight_decay=0.0, grad_clip=1e9, **hp)
    return strategies.create(name, space, seed=3, **hp)


def test_advantage_tell_sets_the_estimated_gradient():
    s = make("advantage")
    p = s.probabilities().clone()
    sample = s.ask("arch")
    gate_grad = torch.randn(6, 4) * sample.gates
    s.tell(sample, 1.0, gate_grad, "arch")
    assert torch.allclose(s.theta.grad, advantage_gradient(p, sample.gates, gate_grad))
    # Adam's first step moves every entry with a non-zero gradient by lr against its sign
    moved = s.theta.detach() - (torch.ones(6, 4) + torch.tensor([1e-6, 0, 0, 0]))
    nz = s.theta.grad != 0
    assert torch.allclose(moved[nz], -3e-4 * s.theta.grad[nz].sign(), rtol=1e-3)


def test_weight_steps_do_not_move_theta():
    s = make("advantage")
    before = s.theta.detach().clone()
    s.tell(s.ask("weight"), 1.0, None, "weight")
    assert torch.equal(before, s.theta.detach())


def test_advantage_wb_baseline_sequence():
    s = make("advantage_wb")
    ds = []
    for step in range(3):
        sample = s.ask("arch")
        d = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.0, 0.3]) * (step + 1)
        gate_grad = sample.gates * d[:, None]
        p = s.probabilities().clone()
        s.tell(sample, 0.0, gate_grad, "arch")
        ds.append(d)
        b = torch.zeros(6) if step == 0 else ds[0] if step == 1 else 0.05 * ds[1] + 0.95 * ds[0]
        expected = advantage_gradient(p, sample.gates, gate_grad, b[:, None])
        assert torch.allclose(s.theta.grad, expected, atol=1e-6), step


def test_reinforce_baseline_updates_on_every_iteration():
    s = make("reinforce")
    s.tell(s.ask("warmup"), 2.0, None, "warmup")     # first loss sets b = 2
    s.tell(s.ask("weight"), 4.0, None, "weight")     # b = 0.05*4 + 0.95*2 = 2.1
    sample = s.ask("arch")
    p = s.probabilities().clone()
    s.tell(sample, 3.0, None, "arch")                # b = 2.145, r = 3 - 2.145 = 0.95 (3 - 2.1)
    assert s.baseline == pytest.approx(2.145)
    assert torch.allclose(s.theta.grad, reinforce_gradient(p, sample.gates, 0.855), atol=1e-6)


def test_sampling_follows_probabilities():
    s = make("advantage")
    with torch.no_grad():
        s.theta.copy_(torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).repeat(6, 1))
    counts = torch.zeros(4)
    for _ in range(2000):
        sample = s.ask("arch")
        counts += sample.gates.sum(0)
        assert sample.active == [[k] for k in sample.arch]
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)


@pytest.mark.parametrize("name", ["advantage", "advantage_wb", "reinforce", "random"])
def test_state_dict_round_trip_gives_same_next_update(name):
    def run(s, steps):
        for i in range(steps):
            sample = s.ask("arch")
            s.tell(sample, 1.0 + 0.1 * i, sample.gates * 0.3 * (i + 1), "arch")
        return s

    a = run(make(name), 4)
    state = a.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    b = make(name)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    run(a, 3)
    run(b, 3)
    assert a.ask("arch").arch == b.ask("arch").arch
    if hasattr(a, "theta"):
        assert torch.equal(a.theta, b.theta)


def test_unknown_strategy_and_bad_hyper_parameter():
    space = create_space("nb201")
    with pytest.raises(UserError, match="unknown strategy 'nope'; choose from"):
        strategies.create("nope", space)
    with pytest.raises(UserError, match="bad hyper-parameter"):
        strategies.create("advantage", space, temperature=3)
