import io
import math

import pytest
import torch
from conftest import interrupted_and_resumed

from oneshot import strategies
from oneshot.config import preset
from oneshot.errors import UserError
from oneshot.runs import RunFolder
from oneshot.spaces import create_space
from oneshot.strategies.advantage import advantage_gradient, none_advantage
from oneshot.strategies.reinforce import reinforce_gradient
from oneshot.trainer import Search

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


def affine_draws(n: int, rows: int = 3, seed: int = 0):
    """n one-hot samples a ~ Cat(p) of a random p, and costs c (L(a) = sum_i <a_i, c_i> + 1, dL/da = c)."""
    torch.manual_seed(seed)
    p = torch.softmax(torch.randn(rows, 4), -1)
    c = torch.randn(rows, 4)
    k = torch.multinomial(p.repeat(n, 1), 1).view(n, rows)
    return p, c, torch.nn.functional.one_hot(k, 4).float()


@pytest.mark.parametrize("estimator", ["advantage", "advantage_wb", "reinforce"])
def test_monte_carlo_mean_equals_exact_gradient_for_affine_loss(estimator):
    """The estimator functions themselves, batched over 200,000 samples; every entry within 5 standard errors
    (the real ask/tell path, REINFORCE's EMA baseline included, is checked in test_contract.py)."""
    n = 200_000
    p, c, a = affine_draws(n)
    if estimator == "advantage":
        g = advantage_gradient(p, a, c.expand(n, 3, 4))
    elif estimator == "advantage_wb":  # a baseline that does not depend on the current sample adds no bias
        g = advantage_gradient(p, a, c.expand(n, 3, 4), torch.tensor([[0.7], [-0.4], [1.5]]))
    else:  # reward L - 1: the baseline is the constant, so the estimate is unbiased
        reward = (a * c).sum((1, 2))[:, None, None]
        g = reinforce_gradient(p, a, reward)
    mean, sem = g.mean(0), g.std(0) / math.sqrt(n)
    exact = exact_gradient(p, c)
    assert torch.all((mean - exact).abs() < 5 * sem + 1e-4), (mean, exact)
    assert exact.abs().max() > 20 * sem.max()  # a doubled or zeroed estimator fails


def test_advantage_has_lower_variance_than_reinforce_on_affine_loss():
    n = 50_000
    p, c, a = affine_draws(n, rows=6, seed=1)
    g_adv = advantage_gradient(p, a, c.expand(n, 6, 4))
    g_rf = reinforce_gradient(p, a, (a * c).sum((1, 2))[:, None, None])
    assert g_adv.var(0).sum() < 0.5 * g_rf.var(0).sum()


def make(name, **hp):
    space = create_space("nb201")
    if name != "random":
        hp = dict(weight_decay=0.0, grad_clip=1e9, **hp)
    return strategies.create(name, space, seed=3, **hp)


def with_sgd(s):
    """θ's optimiser replaced by plain SGD with lr 1: each arch step moves θ by minus the estimate."""
    s.optimizer = torch.optim.SGD([s.theta], lr=1.0)
    return s


def set_rows(s, row):
    with torch.no_grad():
        s.theta.copy_(torch.tensor(row).expand(6, 4))


# θ row (0, ln 2, 0, ln 4): p = (1, 2, 1, 4)/8 on every edge
QUARTER_ROW, QUARTER_P = [0.0, LOG2, 0.0, 2 * LOG2], [0.125, 0.25, 0.125, 0.5]


def test_advantage_tell_moves_theta_by_hand_computed_values():
    s = with_sgd(make("advantage"))
    set_rows(s, QUARTER_ROW)
    start = s.theta.detach().clone()
    arch = (1, 3, 0, 2, 1, 3)
    sample = s.one_hot_sample(arch)
    d = [0.8, -0.4, 0.2, 1.0, -0.6, 0.0]
    gate_grad = torch.full((6, 4), 5.0)                 # entries off the sampled op are ignored
    gate_grad[range(6), list(arch)] = torch.tensor(d)
    s.tell([sample], [1.0], [gate_grad], "arch")
    # ĝ_i = d_i (onehot(k_i) - p): row 0 (k = 1, d = 0.8): 0.8 (-1/8, 3/4, -1/8, -1/2)
    step = start - s.theta.detach()
    assert torch.allclose(step[0], torch.tensor([-0.1, 0.6, -0.1, -0.4]), atol=1e-6)
    assert torch.allclose(step[1], torch.tensor([0.05, 0.1, 0.05, -0.2]), atol=1e-6)   # k = 3, d = -0.4
    for i, (k, di) in enumerate(zip(arch, d)):
        expected = [di * ((j == k) - QUARTER_P[j]) for j in range(4)]
        assert torch.allclose(step[i], torch.tensor(expected), atol=1e-6), i
    # with Adam (the default) the first step moves every entry with a non-zero estimate by lr against its sign
    s = make("advantage")
    set_rows(s, QUARTER_ROW)
    s.tell([s.one_hot_sample(arch)], [1.0], [gate_grad], "arch")
    moved = s.theta.detach() - start
    signs = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 1.0]])   # minus the signs of rows 0, 1
    assert torch.allclose(moved[:2], 3e-4 * signs, rtol=1e-3)
    assert torch.equal(moved[5], torch.zeros(4))                              # d = 0: no move


def test_weight_steps_do_not_move_theta():
    s = make("advantage")
    before = s.theta.detach().clone()
    samples = s.ask("weight")
    s.tell(samples, [1.0] * len(samples), None, "weight")
    assert torch.equal(before, s.theta.detach())


def test_advantage_wb_baseline_sequence():
    """b starts at 0, then holds the first d, then 0.05 d_2 + 0.95 d_1; ĝ = (d - b)(onehot - p)."""
    s = with_sgd(make("advantage_wb"))
    ds = [torch.tensor([0.5, -1.0, 2.0, 0.1, 0.0, 0.3]) * (step + 1) for step in range(3)]
    baselines = [torch.zeros(6), ds[0], 0.05 * ds[1] + 0.95 * ds[0]]
    for d, b in zip(ds, baselines):
        (sample,) = s.ask("arch")
        before = s.theta.detach().clone()
        p = torch.softmax(before, -1)
        s.tell([sample], [0.0], [sample.gates * d[:, None]], "arch")
        expected = (d - b)[:, None] * (sample.gates - p)
        assert torch.allclose(before - s.theta.detach(), expected, atol=1e-6)


def test_reinforce_baseline_updates_on_every_iteration():
    s = with_sgd(make("reinforce"))
    for phase, loss in [("warmup", 2.0), ("weight", 4.0)]:
        s.tell(s.ask(phase), [loss], None, phase)     # b = 2, then 0.05*4 + 0.95*2 = 2.1
    (sample,) = s.ask("arch")
    before = s.theta.detach().clone()
    p = torch.softmax(before, -1)
    s.tell([sample], [3.0], None, "arch")             # b = 2.145, r = 3 - 2.145 = 0.855 = 0.95 (3 - 2.1)
    assert s.baseline == pytest.approx(2.145)
    assert torch.allclose(before - s.theta.detach(), 0.855 * (sample.gates - p), atol=1e-6)


def test_sampling_follows_probabilities():
    s = make("advantage")
    with torch.no_grad():
        s.theta.copy_(torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).repeat(6, 1))
    counts = torch.zeros(4)
    for _ in range(2000):
        (sample,) = s.ask("arch")
        counts += sample.gates.sum(0)
        assert sample.active == [[k] for k in sample.arch]
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)


@pytest.mark.parametrize("name", ["advantage", "advantage_wb", "reinforce", "random"])
def test_state_dict_round_trip_gives_same_next_update(name):
    def run(s, steps):
        for i in range(steps):
            samples = s.ask("arch")
            s.tell(samples, [1.0 + 0.1 * i], [x.gates * 0.3 * (i + 1) for x in samples], "arch")
        return s

    a = run(make(name), 4)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(name)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    run(a, 3)
    run(b, 3)
    assert a.ask("arch")[0].arch == b.ask("arch")[0].arch
    if hasattr(a, "theta"):
        assert torch.equal(a.theta, b.theta)


def test_search_end_to_end_moves_theta_only_through_the_estimator(tmp_path, synthetic_cifar):
    """A short AdvantageNAS search with θ's weight decay 0: θ can only move through the estimated gradient (a
    zeroed estimator leaves it exactly at its start); an interrupted and resumed run ends identically."""
    config = preset("smoke", strategy="advantage", n_weight=256, n_arch=256, batch_size=32, epochs=3,
                    warmup_epochs=1, checkpoint_every=5, log_every=3, strategy_options={"weight_decay": 0.0})
    result = Search(config, synthetic_cifar, torch.device("cpu")).run(RunFolder(tmp_path / "full", config.to_dict()),
                                                                      progress=False)
    assert result["arch_steps"] == 16
    start = strategies.create("advantage", create_space("nb201")).theta.detach()
    assert (torch.tensor(result["theta"]) - start).abs().max() > 1e-3
    resumed = interrupted_and_resumed(config, synthetic_cifar, tmp_path / "cut")
    for key in ("architecture", "best_sampled", "theta"):
        assert resumed[key] == result[key], key


def test_unknown_strategy_and_bad_hyper_parameter():
    space = create_space("nb201")
    with pytest.raises(UserError, match="unknown strategy 'nope'; choose from"):
        strategies.create("nope", space)
    with pytest.raises(UserError, match="hyper-parameter 'temperature'|bad hyper-parameter"):
        strategies.create("advantage", space, temperature=3)
