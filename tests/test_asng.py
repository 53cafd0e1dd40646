import io
import math

import numpy as np
import pytest
import torch
from conftest import interrupted_and_resumed

from oneshot import strategies
from oneshot.config import preset
from oneshot.errors import UserError
from oneshot.runs import RunFolder
from oneshot.spaces import create_space
from oneshot.spaces.base import Categorical, Integer, SearchSpace
from oneshot.strategies.asng import (Layout, asng_update, decode_integers, gaussian_covariance,
                                     gaussian_natural_gradient, mirrored_pair, natural_gradient, ranking_utility,
                                     restrict_categorical, restrict_gaussian, sample_categorical,
                                     sqrt_fisher_categorical, sqrt_fisher_gaussian)
from oneshot.trainer import Search



def one_hot(index, k=3):
    return np.eye(k)[list(index)]


def fresh_state(lay: Layout) -> dict:
    theta, m, v = lay.initial()
    return {"theta": theta, "m": m, "v": v, "s": np.zeros(lay.n), "gamma": np.float64(0.0), "Delta": np.float64(1.0)}


def spec_vector():
    """Spec asng.md §1.6: d = 4, C = 3, uniform θ; x_a = (0,1,2,0) with loss 0.7, x_b = (1,1,0,2) with 0.9."""
    lay = Layout.of([3] * 4)
    x = np.stack([one_hot((0, 1, 2, 0)), one_hot((1, 1, 0, 2))])
    return lay, x, np.array([0.7, 0.9])


def test_spec_test_vector():
    lay, x, f = spec_vector()
    state = fresh_state(lay)
    assert lay.n == 8 and lay.valid_d == 4 and np.allclose(lay.theta_min, 1 / 8)
    g = natural_gradient(state["theta"], x, ranking_utility(f))
    assert np.allclose(g, [[.5, -.5, 0], [0, 0, 0], [-.5, 0, .5], [.5, 0, -.5]], atol=1e-12)
    norm = np.linalg.norm(sqrt_fisher_categorical(state["theta"], g, lay.sizes))
    assert norm == pytest.approx(2.12132, abs=1e-5)
    assert norm ** 2 == pytest.approx((g ** 2 / state["theta"]).sum(), abs=1e-12)  # Σ ĝ²/θ: the Fisher norm
    raw = state["theta"] + g / norm
    assert np.allclose(raw[0], [.569036, .097631, .333333], atol=1e-6)
    new = asng_update(lay, state, x, np.zeros((2, 0)), f)
    assert np.allclose(new["theta"][0], [.550407, .125, .324593], atol=1e-6)
    beta = 1.0 / math.sqrt(lay.n)
    assert beta == pytest.approx(0.353553, abs=1e-6)
    assert new["gamma"] == pytest.approx(0.582107, abs=1e-6) == pytest.approx(beta * (2 - beta), abs=1e-6)
    assert (new["s"] ** 2).sum() == pytest.approx(0.582107, abs=1e-6)
    assert new["Delta"] == pytest.approx(1.071010, abs=1e-6)
    assert 1.0 / new["Delta"] == pytest.approx(0.933698, abs=1e-6)  # the next δ
    assert new["delta"] == 1.0 and not new["skipped"]


def test_spec_vector_through_the_strategy_and_tie_skips():
    space = SearchSpace([Categorical(f"e{i}", ("a", "b", "c")) for i in range(4)])
    s = strategies.create("asng", space)
    lay, x, f = spec_vector()
    archs = [(0, 1, 2, 0), (1, 1, 0, 2)]

    def pair(order):
        """The two samples of one ask, as ``ask`` builds them: x and z travel in ``info``."""
        samples = [s.make_sample(archs[k]) for k in order]
        for sample, k in zip(samples, order):
            sample.info.update(x=x[k], z=np.zeros(0))
        return samples

    s.tell(pair([0, 1]), [0.7, 0.9], None, "weight")  # weight steps are ignored
    assert s.updates == s.skips == 0
    s.tell(pair([0, 1]), [0.7, 0.9], None, "arch")
    assert np.allclose(s.probabilities()[0].numpy(), [.550407, .125, .324593], atol=1e-6)
    assert s.step_size == pytest.approx(0.933698, abs=1e-6) and s.updates == 1
    # a tie (equal losses) leaves θ, s, γ and Δ untouched
    before = {k: np.array(v, copy=True) for k, v in s.state.items()}
    s.tell(pair([1, 0]), [0.8, 0.8], None, "arch")
    assert s.skips == 1 and s.updates == 1
    for k, v in before.items():
        assert np.array_equal(v, s.state[k]), k
    with pytest.raises(UserError, match="pair of one ask"):
        s.tell(pair([0]), [0.7], None, "arch")
    # so does a near tie within the relative 1e-14, but not one just outside it
    new = asng_update(lay, s.state, x, np.zeros((2, 0)), np.array([2.0, 2.0 * (1 + 5e-15)]))
    assert new["skipped"] and np.array_equal(new["Delta"], s.state["Delta"])
    assert not asng_update(lay, s.state, x, np.zeros((2, 0)), np.array([2.0, 2.0 * (1 + 1e-13)]))["skipped"]


def test_ranking_utility():
    assert ranking_utility(np.array([0.9, 0.7])).tolist() == [-1, 1]
    assert ranking_utility(np.array([0.0, 0.0])).tolist() == [0, 0]          # exact ties at 0 too
    assert ranking_utility(np.array([-1.0, -1.0])).tolist() == [0, 0]        # and for negative losses
    assert ranking_utility(np.array([[1.0, 2.0], [3.0, 3.0]])).tolist() == [[1, -1], [0, 0]]  # batched
    # λ = 4: μ = 1; the two tied best share (1 + 0)/2
    assert ranking_utility(np.array([3.0, 1.0, 1.0, 2.0])).tolist() == [-1, 0.5, 0.5, 0]


def test_restriction_keeps_rows_in_bounds_and_summing_to_one():
    lay = Layout.of([2, 3, 5, 4, 1])  # padding and a single-choice row
    mask, tmin = lay.mask, lay.theta_min
    assert lay.valid_d == 4 and np.allclose(tmin, [1 / 4, 1 / 8, 1 / 16, 1 / 12, 0])
    rng = np.random.default_rng(0)
    for _ in range(300):
        theta = np.zeros((5, 5))
        for i, c in enumerate(lay.sizes):
            row = rng.dirichlet(np.full(c, 0.3))
            step = rng.normal(size=c) * rng.uniform(0, 2)
            theta[i, :c] = row + step - step.mean()  # an NG step keeps the sum at 1 but may leave [0, 1]
        r = restrict_categorical(theta, lay)
        assert np.allclose(r.sum(-1), 1.0, atol=1e-12)
        assert (r[~mask] == 0).all()
        assert (r[mask] >= np.broadcast_to(tmin[:, None], r.shape)[mask] - 1e-12).all()
        assert (r[mask] <= np.broadcast_to(1 - (lay.sizes - 1) * tmin, (5, 5)).T[mask] + 1e-12).all()
    inside = np.where(mask, 1.0 / lay.sizes[:, None], 0.0)
    assert np.allclose(restrict_categorical(inside, lay), inside)  # feasible rows are left alone


def test_a_space_with_one_free_decision_is_refused():
    with pytest.raises(UserError, match="valid_d"):
        Layout.of([3])
    with pytest.raises(UserError, match="valid_d"):
        Layout.of([3, 1])
    with pytest.raises(UserError, match="valid_d"):
        Layout.of([3, 2])  # θ_min = 1/2 would pin the 2-choice row at (1/2, 1/2)
    assert Layout.of([3, 3]).valid_d == 2 and Layout.of([2, 2, 2]).valid_d == 3
    space = SearchSpace([Categorical("only", ("a", "b", "c"))])
    with pytest.raises(UserError, match="at least 2"):
        strategies.create("asng", space)


def test_sample_categorical_frequencies_and_padding():
    sizes = np.array([2, 3])
    theta = np.array([[0.3, 0.7, 0.0], [0.2, 0.5, 0.3]])
    u = np.random.default_rng(1).random((100_000, 2))
    index, x = sample_categorical(theta, u, sizes)
    assert x[:, 0, 2].sum() == 0  # padding is never drawn
    assert np.allclose(x.mean(0), theta, atol=0.01)
    assert sample_categorical(theta, np.array([0.999999999999, 0.2]), sizes)[0].tolist() == [1, 1]


def test_gaussian_mirrored_pairs_bounds_and_rounding():
    m, v = np.array([3.0, -1.0]), np.array([9.0 + 4.0, 1.0 + 0.25])  # σ = (2, 0.5)
    z = mirrored_pair(m, v, np.array([0.7, -1.3]))
    assert np.allclose(z[0] + z[1], 2 * m) and np.allclose(z[0], [4.4, -1.65])
    assert decode_integers(np.array([2.5, 3.5, -0.5, 0.5, 1.5, 9.7, -7.2]), -5, 6).tolist() == [2, 4, 0, 0, 2, 6, -5]
    lay = Layout.of([], [0, 0], [10, 3])  # σ_max = (5, 1.5)
    m2, v2 = restrict_gaussian(np.array([12.0, 1.0]), np.array([144.0 + 100.0, 1.0 + 0.01]), lay)
    sigma = np.sqrt(v2 - m2 ** 2)
    assert m2.tolist() == [10.0, 1.0] and np.allclose(sigma, [5.0, 0.25])


def test_gaussian_fisher_is_the_inverse_covariance_of_z_and_z_squared():
    m, v = np.array([1.5, -4.0]), np.array([1.5 ** 2 + 0.8 ** 2, 16.0 + 2.0 ** 2])
    z = np.random.default_rng(2).normal(m, np.sqrt(v - m ** 2), size=(400_000, 2))
    for j in range(2):
        mc = np.cov(np.stack([z[:, j], z[:, j] ** 2]))
        assert np.allclose(gaussian_covariance(m, v)[j], mc, rtol=0.03, atol=0.02)
    gm, gv = np.array([0.3, -0.2]), np.array([1.1, 0.4])
    sv = sqrt_fisher_gaussian(m, v, gm, gv)
    for j in range(2):
        g = np.array([gm[j], gv[j]])
        expected = g @ np.linalg.solve(gaussian_covariance(m, v)[j], g)
        assert (sv[2 * j: 2 * j + 2] ** 2).sum() == pytest.approx(expected, rel=1e-10)


def test_expected_gradient_is_the_natural_gradient_of_the_ranking_objective():
    """λ = 2 on a 3 x 3 space (9 architectures, 9 distinct losses).

    Exact: enumerate all ordered pairs (a, b), weight p(a) p(b), average ĝ. It equals the natural gradient
    E_x[w(x)(x - θ)] of the quantile objective with w(x) = P(L(x') > L(x)) - P(L(x') < L(x)).
    Monte Carlo: 200,000 pairs; every entry within 4 standard errors of the exact value.
    """
    lay = Layout.of([3, 3])
    theta = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    loss = np.array([[0.3, 1.2, 0.8], [0.5, 0.1, 0.9]])  # L = loss[0, a0] + 2 loss[1, a1]: all 9 distinct
    archs = [(i, j) for i in range(3) for j in range(3)]
    L = {a: loss[0, a[0]] + 2 * loss[1, a[1]] for a in archs}
    p = {a: theta[0, a[0]] * theta[1, a[1]] for a in archs}
    X = {a: np.stack([one_hot([a[0]])[0], one_hot([a[1]])[0]]) for a in archs}
    exact = sum(p[a] * p[b] * natural_gradient(theta, np.stack([X[a], X[b]]), ranking_utility(np.array([L[a], L[b]])))
                for a in archs for b in archs)
    w = {a: sum(p[b] * np.sign(L[b] - L[a]) for b in archs) for a in archs}
    assert np.allclose(exact, sum(p[a] * w[a] * (X[a] - theta) for a in archs), atol=1e-12)

    rng = np.random.default_rng(3)
    index, x = sample_categorical(theta, rng.random((200_000, 2, 2)), lay.sizes)
    f = loss[0, index[..., 0]] + 2 * loss[1, index[..., 1]]
    g = natural_gradient(np.broadcast_to(theta, (200_000, 2, 3)), x, ranking_utility(f))
    se = g.std(0) / math.sqrt(len(g))
    assert np.all(np.abs(g.mean(0) - exact) <= 4 * se + 1e-12)
    assert np.abs(exact).max() > 10 * se.max()  # the test can tell a wrong gradient from the right one


def test_mirrored_gaussian_gradient_on_a_quadratic():
    """f(z) = (z - t)², unrounded, one mirrored pair z = m ± σξ: the better sample is the one nearer t, so
    ĝ_m = σ|ξ| sign(t - m) and E[ĝ_m] = σ √(2/π) sign(t - m); and ĝ_v = ½(z_b² - z_w²) = 2m ĝ_m exactly."""
    m, sigma, target = np.array([2.0, -1.0]), np.array([1.5, 0.5]), np.array([5.0, -3.0])
    v = m ** 2 + sigma ** 2
    xi = np.random.default_rng(4).standard_normal((200_000, 2))
    z = mirrored_pair(m, v, xi)                                   # (200000, 2 samples, 2 integers)
    for j in range(2):
        f = (z[..., j] - target[j]) ** 2
        gm, gv = gaussian_natural_gradient(m[j:j + 1], v[j:j + 1], z[..., j:j + 1], ranking_utility(f))
        assert np.allclose(gv, 2 * m[j] * gm, atol=1e-12)
        expected = sigma[j] * math.sqrt(2 / math.pi) * np.sign(target[j] - m[j])
        assert abs(gm.mean() - expected) < 4 * gm.std() / math.sqrt(len(gm))


def mixed_space():
    return SearchSpace([Categorical("a", ("x", "y", "z")), Categorical("b", ("x", "y")),
                        Integer("width", 0, 20), Categorical("c", ("x", "y", "z", "w")), Integer("depth", -5, 5)])


def mixed_loss(arch):  # optimum (1, 0, 13, 3, -2)
    return (3 * (arch[0] != 1) + 3 * (arch[1] != 0) + 0.1 * (arch[2] - 13) ** 2 + 2 * (arch[3] != 3)
            + 0.3 * (arch[4] + 2) ** 2 + 1.0)


def test_mixed_space_asks_mirrored_pairs_within_bounds_and_improves():
    space = mixed_space()
    s = strategies.create("asng", space, seed=0)
    assert s.layout.n == 2 + 1 + 3 + 2 * 2 and s.probabilities().shape == (5, 21)
    assert torch.allclose(s.probabilities().sum(-1), torch.ones(5, dtype=torch.float64))
    start = s.derive()
    assert start == (0, 0, 10, 0, 0)  # first argmax, round(m) at the middle of each range
    for _ in range(300):
        first, second = s.ask("arch")
        assert np.allclose(first.info["z"] + second.info["z"], 2 * s.state["m"])  # the pair is antithetic
        assert second.gates[2, second.arch[2]] == 1 and second.active[4] == [second.arch[4] + 5]  # value - low
        s.tell([first, second], [mixed_loss(first.arch), mixed_loss(second.arch)], None, "arch")
        sigma = np.sqrt(s.state["v"] - s.state["m"] ** 2)
        assert np.all(sigma >= 0.25 - 1e-9) and np.all(sigma <= np.array([10.0, 5.0]) + 1e-9)
    assert s.updates + s.skips == 300
    best = s.derive()
    assert best[:2] == (1, 0) and mixed_loss(best) < 0.5 * mixed_loss(start)  # 20 seeds: 1.0 to 3.4, start 8.1


def test_sng_finds_integer_optima():
    space = SearchSpace([Integer("width", 0, 20), Integer("depth", -5, 5), Integer("k", 1, 9)])
    s = strategies.create("sng", space, seed=0, delta_init=0.3)

    def loss(arch):
        return (arch[0] - 13) ** 2 + (arch[1] + 2) ** 2 + (arch[2] - 4) ** 2

    for _ in range(600):
        samples = s.ask("arch")
        s.tell(samples, [loss(x.arch) for x in samples], None, "arch")
    assert s.derive() == (13, -2, 4)


def test_sng_keeps_its_step():
    space = create_space("nb201")
    s = strategies.create("sng", space, delta_init=0.3)
    assert s.name == "sng"
    for i in range(5):
        s.tell(s.ask("arch"), [1.0 + i, 2.0], None, "arch")
    assert s.step_size == 0.3 and s.delta == 0.3 and float(s.state["Delta"]) == 1.0


def play(s, steps, offset=0):
    for i in range(offset, offset + steps):
        samples = s.ask("arch")
        s.tell(samples, [1.0 + 0.1 * math.sin(3 * i + k) + 0.01 * sum(x.arch) for k, x in enumerate(samples)],
               None, "arch")
        s.tell(s.ask("weight"), [2.0, 2.0], None, "weight")


@pytest.mark.parametrize("space", [create_space("nb201"), mixed_space()], ids=["nb201", "mixed"])
def test_state_dict_round_trip_gives_the_same_next_updates(space):
    a = strategies.create("asng", space, seed=4)
    play(a, 6)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = strategies.create("asng", space, seed=99)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    for s in (a, b):
        play(s, 5, offset=6)
    assert a.updates == b.updates > 0
    assert torch.equal(a.probabilities(), b.probabilities())
    for k in a.state:
        assert np.array_equal(a.state[k], b.state[k]), k
    assert [x.arch for x in a.ask("arch")] == [x.arch for x in b.ask("arch")]


def tiny_config(strategy, **changes):
    return preset("smoke", strategy=strategy, n_weight=256, n_arch=256, batch_size=32, epochs=3, warmup_epochs=1,
                  checkpoint_every=5, log_every=3, **changes)


def test_search_end_to_end_and_resume(tmp_path, synthetic_cifar):
    config = tiny_config("asng")
    full = Search(config, synthetic_cifar, torch.device("cpu"))
    result = full.run(RunFolder(tmp_path / "full", config.to_dict()), progress=False)
    assert result["iterations"] == 24 and result["arch_steps"] == 16
    assert full.strategy.updates + full.strategy.skips == 16  # one θ update per arch step (2 samples each)
    theta = torch.tensor(result["theta"], dtype=torch.float64)
    assert torch.allclose(theta.sum(-1), torch.ones(6, dtype=torch.float64))
    assert (theta - 0.25).abs().max() > 0.05  # θ moved away from uniform
    assert result["architecture"] == create_space("nb201").to_string(full.strategy.derive())
    resumed = interrupted_and_resumed(config, synthetic_cifar, tmp_path / "cut")
    for key in ("architecture", "best_sampled", "theta"):
        assert resumed[key] == result[key], key


def test_toy_benchmark_tiny(tmp_path):
    from conftest import experiment

    run_asng_toy = experiment("asng_toy").run_asng_toy

    record = run_asng_toy(deltas=(0.1, 1.0), seeds=(0, 1), methods=("asng", "sng"), max_iter=3000,
                          out_dir=tmp_path, progress=False)
    assert (tmp_path / "asng_toy.json").exists() and (tmp_path / "asng_toy.png").stat().st_size > 0
    arch = record["arch_iterations"]["asng"]
    assert all(1 <= n <= 3000 for runs in arch.values() for n in runs)  # ASNG finds the optimum within 3k
    assert "| 0.1 |" in record["table"] and "ASNG" in record["table"]
