import json

import pytest
import torch
import torch.nn.functional as F

from oneshot.spaces.toy import ToyNetwork, ToySpace
from oneshot.toy import ToyTrial, first_below, run_toy


def by_hand(net: ToyNetwork, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    """The toy network written as an explicit loop over positions and candidates (one conv each)."""
    k = net.candidates
    y = 0.0
    for n in range(net.positions):
        mixed = sum(coeff[n, c] * F.conv2d(x, net.conv[n * k + c: n * k + c + 1], stride=2)[:, 0]
                    for c in range(k))
        y = y + (torch.tanh(mixed) * net.head[n]).sum((-1, -2))
    return y / net.positions


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(3)
    net = ToyNetwork(positions=3, candidates=4, generator=g)
    x = torch.rand(5, 1, 13, 13, generator=g) * 2 - 1
    return net, x


def test_space():
    space = ToySpace()
    assert len(space) == 10 and space.max_choices == 10 and space.size == 10 ** 10
    assert space.decisions[3].name == "pos3" and space.decisions[3].choices[7] == "c7"
    assert all(not p.requires_grad for p in space.build_supernet().parameters())
    assert list(space.build_supernet().parameters()) == []  # buffers only: nothing for an optimiser


def test_one_hot_and_dense_outputs_match_the_loop(small):
    net, x = small
    arch = [2, 0, 3]
    one_hot = torch.zeros(3, 4)
    one_hot[[0, 1, 2], arch] = 1.0
    expected = by_hand(net, x, one_hot)
    assert net(x, one_hot, [[k] for k in arch], unit_gates=True).shape == (5,)
    assert torch.allclose(net(x, one_hot, [[k] for k in arch], unit_gates=True), expected, atol=1e-6)
    assert torch.allclose(net(x, None, [[k] for k in arch]), expected, atol=1e-6)  # unscaled child
    table = net.single_path_outputs(x)                                              # the evaluation table
    assert torch.allclose(table[:, [0, 1, 2], arch].mean(-1), expected, atol=1e-6)
    soft = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.allclose(net(x, soft, None), by_hand(net, x, soft), atol=1e-6)      # dense mix
    # active restricts the mix: ops 0 and 2 of position 0 only, all ops elsewhere
    masked = soft.clone()
    masked[0, [1, 3]] = 0.0
    assert torch.allclose(net(x, soft, [[0, 2], [0, 1, 2, 3], [0, 1, 2, 3]]), by_hand(net, x, masked), atol=1e-6)


def test_teacher_has_zero_loss_against_itself():
    trial = ToyTrial(seed=5, iterations=20, eval_every=10)
    assert all(trial.eval_loss(trial.teacher, i) == 0.0 for i in range(3))
    wrong = list(trial.teacher)
    wrong[0] = (wrong[0] + 1) % 10
    assert trial.eval_loss(wrong, 0) > 1e-4
    x = torch.rand(7, 1, 13, 13) * 2 - 1
    teacher = trial.network(x, None, trial.teacher_active)
    gates = torch.zeros(10, 10)
    gates[torch.arange(10), list(trial.teacher)] = 1.0
    assert F.mse_loss(trial.network(x, gates, trial.teacher_active, unit_gates=True), teacher) == 0.0


def test_gate_gradient_is_inner_product_with_the_channel(small):
    net, x = small
    arch = [1, 3, 0]
    target = torch.randn(5, generator=torch.Generator().manual_seed(2))
    gates = torch.zeros(3, 4)
    gates[[0, 1, 2], arch] = 1.0
    gates.requires_grad_()
    loss = F.mse_loss(net(x, gates, [[k] for k in arch], unit_gates=True, inactive_grad=True), target)
    (gate_grad,) = torch.autograd.grad(loss, gates)
    # by hand: e_n = channel arch[n] of position n; dL/de_n from autograd on e itself
    channels = F.conv2d(x, net.conv, stride=2).view(5, 3, 4, 4, 4)
    e = channels[:, [0, 1, 2], arch].clone().requires_grad_()          # (B, positions, 4, 4)
    y = (torch.tanh(e) * net.head).sum((-1, -2)).mean(-1)
    (de,) = torch.autograd.grad(F.mse_loss(y, target), e)
    for n in range(3):
        for c in range(4):
            if c == arch[n]:
                expected = (de[:, n] * channels[:, n, c]).sum()        # <dL/de, channel>
            else:
                expected = de[:, n].sum()                              # GDAS: op j adds gate_j * 1
            assert gate_grad[n, c].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-9)
    # without inactive_grad the ops that did not run get no gradient
    (plain,) = torch.autograd.grad(F.mse_loss(net(x, gates, [[k] for k in arch], True), target), gates)
    assert plain[gates.detach() == 0].abs().max() == 0.0
    assert torch.allclose(plain[gates.detach() == 1], gate_grad[gates.detach() == 1])


def test_first_below():
    assert first_below([3.0, 1.0, 0.005, 0.5], 0.01, 10) == 20.0
    assert first_below([3.0, 1.0], 0.01, 10) == float("inf")


def test_short_advantage_run_learns(tmp_path):
    result = run_toy(trials=1, iterations=200, methods=["advantage", "reinforce"], out_dir=str(tmp_path),
                     progress=False)
    adv = result["curves_x100"]["advantage"][0]
    assert len(adv) == 21 and adv[0] == result["curves_x100"]["reinforce"][0][0]  # same start, same eval batch
    # the initial argmax (op 0 everywhere) is far from the teacher; 200 steps reach a small fraction of it
    assert adv[0] > 1.0
    assert adv[-1] < 0.25 * adv[0]
    assert result["final"]["advantage"][0]["positions_correct"] >= 7
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["summary"]["advantage"]["final_median_x100"] == pytest.approx(adv[-1])
    assert (tmp_path / "toy.png").stat().st_size > 1000
