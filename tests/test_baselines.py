"""The six baselines of the AdvantageNAS paper: θ-updates against hand-derived values, state round trips,
sampling sanity, and one short search per strategy through the real trainer."""

import io
import math

import pytest
import torch
from conftest import interrupted_and_resumed

from oneshot import strategies
from oneshot.config import preset
from oneshot.runs import RunFolder
from oneshot.spaces import create_space
from oneshot.strategies.gdas import gdas_temperature
from oneshot.strategies.nasp import project
from oneshot.strategies.parsec import parsec_gradient
from oneshot.strategies.proxyless import proxyless_gradient, rescale
from oneshot.strategies.snas_relaxed import snas_temperature
from oneshot.trainer import Search

BASELINES = ["parsec", "gdas", "proxyless", "nasp", "snas_relaxed", "darts"]
LN2, LN3 = math.log(2.0), math.log(3.0)
BETA1, BETA2, LR = 0.5, 0.999, 3e-4
SMOOTHING = 0.001   # Gumbel draws on log(p + 0.001): op k is drawn first with probability (p_k + 0.001) / 1.004


def make(name, **hp):
    """No weight decay and no clipping, so that θ.grad is the estimator itself."""
    return strategies.create(name, create_space("nb201"), seed=3, **{"weight_decay": 0.0, "grad_clip": 1e9, **hp})


def set_theta(s, rows):
    with torch.no_grad():
        s.theta.copy_(torch.as_tensor(rows, dtype=torch.float32).expand_as(s.theta))


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def relaxed_grad_by_hand(theta, noise, tau, g, c=0.001):
    """d/dθ of <g, z> for z = softmax((log(softmax(θ) + c) + G)/τ), by the chain rule, in plain floats:
    dL/ds_k = z_k (g_k - Σ z g)/τ;  dL/dp_k = dL/ds_k / (p_k + c);  dL/dθ_j = p_j (v_j - Σ_k p_k v_k)."""
    p = softmax(theta)
    z = softmax([(math.log(pk + c) + gk) / tau for pk, gk in zip(p, noise)])
    zg = sum(zk * gk for zk, gk in zip(z, g))
    v = [zk * (gk - zg) / tau / (pk + c) for zk, gk, pk in zip(z, g, p)]
    pv = sum(pk * vk for pk, vk in zip(p, v))
    return [pj * (vj - pv) for pj, vj in zip(p, v)]


def assert_frequencies(counts, expected, what):
    """Every cell's frequency within 4.5 binomial standard errors of its expected probability."""
    n = counts.sum(-1, keepdim=True)
    freq, se = counts / n, (expected * (1 - expected) / n).sqrt()
    assert torch.all((freq - expected).abs() <= 4.5 * se), (what, freq, expected)


def first_adam_step(t: int) -> float:
    """|Δθ|/lr of Adam's first real update (m = v = 0 before) when its step count reaches t:
    m̂/sqrt(v̂) = (1-β1) g/(1-β1^t) / (sqrt(1-β2) |g| / sqrt(1-β2^t))."""
    return (1 - BETA1) / (1 - BETA1 ** t) * math.sqrt((1 - BETA2 ** t) / (1 - BETA2))


# --- PARSEC ----------------------------------------------------------------------------------------
def test_parsec_gradient_hand_values():
    p = torch.tensor([[0.25, 0.75]])                        # θ = (0, ln 3)
    same = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])        # both samples chose op 0
    losses = torch.tensor([0.0, LN3])
    # code: w = softmax(0, ln3) = (1/4, 3/4); Σ w a = (1, 0); ĝ = (1, 0) - p = (3/4, -3/4): op 0 pushed down
    assert torch.allclose(parsec_gradient(p, same, losses), torch.tensor([[0.75, -0.75]]))
    # paper: -(Σ softmax(-L) a - p) = -(3/4, -3/4): op 0 pushed up
    assert torch.allclose(parsec_gradient(p, same, losses, follow_code=False), torch.tensor([[-0.75, 0.75]]))
    apart = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    losses = torch.tensor([LN3, 0.0])
    # code: w = (3/4, 1/4), Σ w a = (3/4, 1/4), minus p = (1/2, -1/2); paper: w = (1/4, 3/4) = p, so 0
    assert torch.allclose(parsec_gradient(p, apart, losses), torch.tensor([[0.5, -0.5]]))
    assert torch.allclose(parsec_gradient(p, apart, losses, follow_code=False), torch.zeros(1, 2), atol=1e-7)


def test_parsec_steps_only_every_eighth_arch_call_and_counts_adam_t():
    s = make("parsec")
    start = s.theta.detach().clone()
    s.tell(s.ask("weight"), [5.0], None, "weight")            # weight steps neither buffer nor count
    arches, losses = [], []
    for call in range(1, 8):
        (sample,) = s.ask("arch")
        s.tell([sample], [1.0 + 0.1 * call], None, "arch")
        arches.append(sample.arch)
        losses.append(1.0 + 0.1 * call)
        assert torch.equal(s.theta.detach(), start) and s.theta.grad is None
        assert s.optimizer.state[s.theta]["step"].item() == call
    (sample,) = s.ask("arch")
    p = s.probabilities().clone()
    s.tell([sample], [2.5], None, "arch")
    arches.append(sample.arch)
    losses.append(2.5)
    expected = parsec_gradient(p, torch.stack([s.one_hot(a) for a in arches]), torch.tensor(losses))
    assert torch.allclose(s.theta.grad, expected, atol=1e-7)
    assert s.optimizer.state[s.theta]["step"].item() == 8 and s.buffer_loss == []
    # Adam's first real step at t = 8 (Chainer's count): each entry moves by lr * 1.4173 against its gradient,
    # not by lr as it would at t = 1
    nz = expected.abs() > 1e-6
    moved = (s.theta.detach() - start)[nz]
    assert first_adam_step(8) == pytest.approx(1.41729, rel=1e-4)
    assert torch.allclose(moved, -LR * first_adam_step(8) * expected[nz].sign(), rtol=1e-4)


# --- GDAS ------------------------------------------------------------------------------------------
def test_gdas_temperature_schedule():
    """τ = 10 - 9.9 n/N: 10 at the start, 0.1 at the end (a reversed or constant schedule fails)."""
    assert gdas_temperature(0.0) == 10.0
    assert gdas_temperature(0.25) == pytest.approx(7.525)
    assert gdas_temperature(0.5) == pytest.approx(5.05)
    assert gdas_temperature(1.0) == pytest.approx(0.1)


GDAS_THETA, GDAS_NOISE, GDAS_GRAD = [0.0, LN2, -0.5, 1.0], [0.3, -0.2, 0.9, 0.0], [0.4, -1.0, 0.25, 2.0]


@pytest.mark.parametrize("progress, tau", [(0.0, 10.0), (0.5, 5.05), (1.0, 0.1)])
def test_gdas_tell_pulls_dL_dh_back_at_the_scheduled_temperature(progress, tau):
    s = make("gdas")
    set_theta(s, GDAS_THETA)
    s.set_schedule(1.0, progress)                             # the trainer's call before the arch step
    (sample,) = s.ask("arch")
    assert sample.unit and sample.inactive_grad and sample.active == [[k] for k in sample.arch]
    assert torch.equal(sample.gates.sum(-1), torch.ones(6))
    sample.info["noise"] = torch.tensor(GDAS_NOISE).expand(6, 4).clone()   # known noise: every row the same case
    s.tell([sample], [1.0], [torch.tensor(GDAS_GRAD).expand(6, 4)], "arch")
    expected = torch.tensor(relaxed_grad_by_hand(GDAS_THETA, GDAS_NOISE, tau, GDAS_GRAD))
    assert torch.allclose(s.theta.grad, expected.expand(6, 4), rtol=1e-4, atol=1e-8)
    (weight,) = s.ask("weight")
    assert not weight.inactive_grad and weight.unit and len(weight.active[0]) == 1


def test_gdas_gradients_at_the_three_temperatures_differ():
    """So the test above tells the schedule's three points apart (a constant τ fails at two of them)."""
    grads = [torch.tensor(relaxed_grad_by_hand(GDAS_THETA, GDAS_NOISE, tau, GDAS_GRAD)) for tau in (10, 5.05, 0.1)]
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert (grads[a] - grads[b]).abs().max() > 0.01


def test_gdas_argmax_frequency_follows_smoothed_probabilities():
    s = make("gdas")
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    set_theta(s, p.log())
    counts = torch.zeros(4)
    for _ in range(2000):
        counts += s.ask("weight")[0].gates.sum(0)
    # Gumbel-argmax of log(p + 0.001) draws op k with probability (p_k + 0.001) / 1.004
    assert_frequencies(counts, (p + SMOOTHING) / (1 + 4 * SMOOTHING), "gdas")


# --- ProxylessNAS ----------------------------------------------------------------------------------
def test_proxyless_gradient_hand_values():
    theta = torch.tensor([[0.0, LN3, 5.0, 7.0], [2.0, 0.0, 1.0, 1.0]])
    pair = torch.tensor([[True, True, False, False], [False, False, True, True]])
    d = torch.tensor([[0.4, -0.8, 9.0, 9.0], [9.0, 9.0, 1.0, 3.0]])  # entries off the pair are ignored
    # row 0: q = (1/4, 3/4), Σ q d = 0.1 - 0.6 = -0.5, g = q (d + 0.5) = (0.225, -0.225)
    # row 1: q = (1/2, 1/2), Σ q d = 2, g = q (d - 2) = (-0.5, 0.5)
    expected = torch.tensor([[0.225, -0.225, 0.0, 0.0], [0.0, 0.0, -0.5, 0.5]])
    assert torch.allclose(proxyless_gradient(theta, pair, d), expected, atol=1e-6)


def test_proxyless_rescale_is_per_edge():
    mask = torch.ones(3, 4, dtype=torch.bool)
    old = torch.zeros(3, 4)
    new = torch.tensor([[LN2, LN2, 1.0, 1.0], [0.5, 0.5, LN3, LN3], [0.2, 0.1, -0.3, 0.4]])
    pair = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    out = rescale(old, new, pair, mask, "pair")
    # row 0: off = log((2 + 2)/(1 + 1)) = ln 2; row 1: off = log((3 + 3)/2) = ln 3;
    # row 2: off = log((e^0.1 + e^-0.3)/2); entries off the pair never move
    off2 = math.log((math.exp(0.1) + math.exp(-0.3)) / 2)
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.1 - off2, -0.3 - off2, 0.4]])
    assert torch.allclose(out, expected, atol=1e-6)
    out = rescale(old, new, pair, mask, "all")
    # the code's rule, per edge: row 0: off = log((2 + 2 + 2e)/4 + 1e-4) = log(1 + e/2 + 1e-4)
    off0 = math.log(1 + math.e / 2 + 1e-4)
    assert torch.allclose(out[0], torch.tensor([LN2 - off0, LN2 - off0, 1.0, 1.0]), atol=1e-6)


def test_proxyless_pair_frequencies_follow_gumbel_top2():
    """The pair is Gumbel-top-2 on log(p + 0.001): sampling without replacement, so the unordered pair {a, b}
    comes with probability w_a/W w_b/(W - w_a) + w_b/W w_a/(W - w_b), w = p + 0.001, and the first pick
    (``arch``) with w/W. 1,500 asks x 6 edges; a deterministic top-2 fails."""
    s = make("proxyless")
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    set_theta(s, p.log())
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    counts, first = torch.zeros(len(pairs)), torch.zeros(4)
    for _ in range(1500):
        (sample,) = s.ask("weight")
        for ops, k in zip(sample.active, sample.arch):
            counts[pairs.index(tuple(ops))] += 1
            first[k] += 1
    w = (p + SMOOTHING).double()
    total = w.sum()
    expected = torch.tensor([w[a] / total * w[b] / (total - w[a]) + w[b] / total * w[a] / (total - w[b])
                             for a, b in pairs])
    assert expected.sum() == pytest.approx(1.0)
    assert_frequencies(counts.double(), expected, "proxyless pairs")
    assert_frequencies(first.double(), w / total, "proxyless first pick")


def test_proxyless_samples_two_distinct_ops_and_tell_updates_the_pair():
    s = make("proxyless")
    for _ in range(200):
        (sample,) = s.ask("weight")
        assert all(len(ops) == 2 and ops[0] < ops[1] for ops in sample.active)
        assert all(a in ops for a, ops in zip(sample.arch, sample.active))
        assert sample.unit and torch.equal(sample.gates.sum(-1), torch.full((6,), 2.0))
    set_theta(s, [0.0, 0.5, -0.5, 1.0])
    old = s.theta.detach().clone()
    (sample,) = s.ask("arch")
    pair = sample.gates.bool()
    gate_grad = sample.gates * torch.tensor([0.4, -0.8, 0.3, 0.1])
    s.tell([sample], [1.0], [gate_grad], "arch")
    assert torch.allclose(s.theta.grad, proxyless_gradient(old, pair, gate_grad), atol=1e-7)
    new = s.theta.detach()
    assert torch.equal(new[~pair], old[~pair])  # no gradient, no decay, first Adam step: untouched
    # the rescale keeps each pair's total mass: logsumexp over the pair is unchanged on every edge
    lse = lambda t: torch.logsumexp(t.masked_fill(~pair, -math.inf), -1)
    assert torch.allclose(lse(new), lse(old), atol=1e-6)
    assert not torch.equal(new, old)


# --- NASP ------------------------------------------------------------------------------------------
def test_nasp_projection_hand_values():
    theta = torch.tensor([[-1.0, 0.0, 1.0, 3.0], [0.2, 0.5, 0.9, 0.1], [-0.5, 0.5, 0.0, 0.25], [0.5, 2.0, 1.0, 0.0]])
    expected = torch.tensor([
        [0.0, 0.25, 0.5, 1.0],      # +1 -> (0, 1, 2, 4), then / 4
        [0.2, 0.5, 0.9, 0.1],       # already in the box
        [0.0, 1.0, 0.5, 0.75],      # +0.5; max is then exactly 1
        [0.25, 1.0, 0.5, 0.0],      # min 0: no shift; / 2
    ])
    assert torch.allclose(project(theta), expected)
    # masked entries (choices a decision lacks) take no part in min and max
    mask = torch.tensor([[True, True, True, False]])
    assert torch.allclose(project(torch.tensor([[0.5, 2.0, 1.0, -9.0]]), mask)[0, :3], torch.tensor([0.25, 1.0, 0.5]))


def test_nasp_steps():
    s = make("nasp", lr=0.1)
    # the initial θ (1 + 1e-6, 1, 1, 1) is projected into the box: divided by 1 + 1e-6
    assert torch.allclose(s.theta[0], torch.tensor([1.0, 1 / (1 + 1e-6), 1 / (1 + 1e-6), 1 / (1 + 1e-6)]))
    (warm,) = s.ask("warmup")
    assert warm.unit and len(warm.active[0]) == 1
    (weight,) = s.ask("weight")
    assert weight.active == [[0]] * 6 and weight.arch == (0,) * 6
    (arch,) = s.ask("arch")
    assert arch.active is None and not arch.unit and torch.equal(arch.gates, s.one_hot([0] * 6))
    gate_grad = torch.tensor([0.3, -0.2, 0.1, -0.4]).expand(6, 4)
    s.tell([arch], [1.0], [gate_grad], "arch")
    assert torch.equal(s.theta.grad, gate_grad)
    # first Adam step: -lr sign(g) = (-0.1, +0.1, -0.1, +0.1) from (1, c, c, c), c = 1/(1 + 1e-6);
    # max 1.1 * c... > 1, so the row is divided by c + 0.1
    c = 1 / (1 + 1e-6)
    expected = torch.tensor([0.9, c + 0.1, c - 0.1, c + 0.1]) / (c + 0.1)
    assert torch.allclose(s.theta[0], expected, atol=1e-6)
    assert s.derive() == (1,) * 6


def test_nasp_warmup_samples_follow_softmax_theta():
    """Warm-up draws are Gumbel-argmax on log(softmax(θ) + 0.001), not the argmax (1,500 asks x 6 edges)."""
    s = make("nasp")
    row = torch.tensor([0.0, 0.3, 1.0, 0.6])                     # inside the box: the projection keeps it
    set_theta(s, row)
    counts = torch.zeros(4)
    for _ in range(1500):
        counts += s.ask("warmup")[0].gates.sum(0)
    assert_frequencies(counts.double(), ((torch.softmax(row, -1) + SMOOTHING) / (1 + 4 * SMOOTHING)).double(),
                       "nasp warm-up")


# --- SNAS ------------------------------------------------------------------------------------------
def test_snas_temperature_schedule_and_floor():
    assert snas_temperature(0.0) == 1.0
    assert snas_temperature(0.5) == pytest.approx(0.5)
    assert snas_temperature(0.9) == pytest.approx((1 + math.cos(0.9 * math.pi)) / 2)  # 0.0245
    assert snas_temperature(1.0) == 0.01 and snas_temperature(0.95) == 0.01
    # the strategy draws with the τ of the current schedule point (a reversed schedule fails at 0 and 0.9)
    s = make("snas_relaxed")
    for progress, tau in [(0.0, 1.0), (0.5, 0.5), (0.9, 0.0245), (1.0, 0.01)]:
        s.set_schedule(1.0, progress)
        assert s.ask("arch")[0].info["tau"] == pytest.approx(tau, abs=1e-4)


def test_snas_relaxed_gates_and_autograd_chain():
    s = make("snas_relaxed")
    theta_row, g = [0.0, LN2, -0.5, 1.0], [0.4, -1.0, 0.25, 2.0]
    set_theta(s, theta_row)
    s.set_schedule(1.0, 0.5)                                   # τ = 0.5 for the next ask
    (sample,) = s.ask("arch")
    noise, tau = sample.info["noise"], sample.info["tau"]
    assert tau == pytest.approx(0.5) and sample.active is None and not sample.unit
    for i in range(6):
        row = noise[i].tolist()
        z = softmax([(math.log(p + 0.001) + n) / 0.5 for p, n in zip(softmax(theta_row), row)])
        assert torch.allclose(sample.gates[i], torch.tensor(z), atol=1e-6)
        assert sample.arch[i] == max(range(4), key=lambda k: z[k])
    s.set_schedule(1.0, 0.6)                                   # the trainer's call between ask and tell
    s.tell([sample], [1.0], [torch.tensor(g).expand(6, 4)], "arch")
    for i in range(6):   # the gradient is taken at the τ the gates were drawn with
        expected = relaxed_grad_by_hand(theta_row, noise[i].tolist(), 0.5, g)
        assert torch.allclose(s.theta.grad[i], torch.tensor(expected), atol=1e-6)
    (weight,) = s.ask("weight")
    assert weight.active is None and torch.allclose(weight.gates.sum(-1), torch.ones(6))


# --- DARTS -----------------------------------------------------------------------------------------
def test_darts_softmax_jacobian_hand_values():
    s = make("darts")
    set_theta(s, [0.0, LN2, 0.0, 2 * LN2])                     # p = (1, 2, 1, 4)/8
    (sample,) = s.ask("arch")
    assert sample.active is None and torch.allclose(sample.gates[0], torch.tensor([1, 2, 1, 4]) / 8.0)
    assert sample.arch == (3,) * 6 == s.derive()
    # g = (1, 0, -1, 0.5): Σ p g = (1 - 1 + 2)/8 = 0.25; dθ_j = p_j (g_j - 0.25)
    s.tell([sample], [1.0], [torch.tensor([1.0, 0.0, -1.0, 0.5]).expand(6, 4)], "arch")
    expected = torch.tensor([0.125 * 0.75, 0.25 * -0.25, 0.125 * -1.25, 0.5 * 0.25])
    assert torch.allclose(s.theta.grad, expected.expand(6, 4), atol=1e-7)


# --- every baseline --------------------------------------------------------------------------------
def play(s, steps, offset=0):
    """Arch and weight steps as the trainer runs them, with made-up losses and gate gradients."""
    for i in range(offset, offset + steps):
        s.set_schedule(0.9, i / 40)
        (sample,) = s.ask("arch")
        gate_grads = None
        if s.needs_gate_grad:
            gate_grad = torch.linspace(-1, 1, 24).view(6, 4).roll(i) * (0.2 + 0.1 * i)
            if sample.active is not None and not sample.inactive_grad:
                gate_grad = gate_grad * sample.gates
            gate_grads = [gate_grad]
        s.tell([sample], [1.0 + 0.1 * math.sin(i)], gate_grads, "arch")
        s.tell(s.ask("weight"), [2.0], None, "weight")


@pytest.mark.parametrize("name", BASELINES)
def test_state_dict_round_trip_gives_the_same_next_updates(name):
    a = make(name)
    play(a, 4)                                                 # PARSEC: half a buffer
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(name)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    play(a, 5, offset=4)
    play(b, 5, offset=4)
    assert not torch.equal(a.theta, make(name).theta)
    assert torch.equal(a.theta, b.theta)
    (sa,), (sb,) = a.ask("arch"), b.ask("arch")
    assert sa.arch == sb.arch and torch.equal(sa.gates, sb.gates)


def tiny_config(strategy, **changes):
    return preset("smoke", strategy=strategy, n_weight=256, n_arch=256, batch_size=32, epochs=3, warmup_epochs=1,
                  checkpoint_every=5, log_every=3, **changes)


@pytest.mark.parametrize("name", BASELINES)
def test_search_end_to_end_and_resume(tmp_path, synthetic_cifar, name):
    # θ's weight decay 0: θ moves only through the strategy's estimate (a zeroed estimator leaves it unchanged)
    config = tiny_config(name, strategy_options={"weight_decay": 0.0})
    full = Search(config, synthetic_cifar, torch.device("cpu"))
    result = full.run(RunFolder(tmp_path / "full", config.to_dict()), progress=False)
    assert result["iterations"] == 24 and result["arch_steps"] == 16
    space = create_space("nb201")
    assert len(space.from_string(result["architecture"])) == 6
    assert len(space.from_string(result["best_sampled"]["architecture"])) == 6
    assert not torch.allclose(torch.tensor(result["theta"]), strategies.create(name, space).theta, atol=1e-5)
    # interrupted at 13, resumed from the checkpoint at 10: the same end as the uninterrupted run
    resumed = interrupted_and_resumed(config, synthetic_cifar, tmp_path / "cut")
    for key in ("architecture", "best_sampled", "theta"):
        assert resumed[key] == result[key], key
