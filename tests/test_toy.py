import json

import pytest
import torch
import torch.nn.functional as F

from oneshot.errors import UserError

from oneshot import strategies
from oneshot.runs import MemoryFolder
from oneshot.spaces.toy import ToyNetwork, ToySpace
from oneshot.tasks.toy import ARCH_DATA, WEIGHT_DATA, ToyTask, toy_inputs
from oneshot.trainer import Search

from conftest import experiment  # noqa: E402

_driver = experiment('toy')
OPTIMIZER, first_below, main, run_method, run_toy, toy_config, toy_task = (
    _driver.OPTIMIZER, _driver.first_below, _driver.main, _driver.run_method, _driver.run_toy, _driver.toy_config, _driver.toy_task)


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


def test_the_seed_fixes_the_network_and_then_the_teacher():
    space = ToySpace(seed=4)
    a, b = space.build_supernet(), space.build_supernet(input_shape=(1, 13, 13), num_outputs=1, channels=16)
    assert torch.equal(a.conv, b.conv) and torch.equal(a.head, b.head)            # the same network every time
    assert not torch.equal(a.conv, ToySpace(seed=5).build_supernet().conv)
    g = torch.Generator().manual_seed(4)                                          # convs first, then the teacher
    ToyNetwork(10, 10, g)
    assert space.teacher() == tuple(torch.randint(10, (10,), generator=g).tolist())
    with pytest.raises(UserError, match="toy task"):
        space.build_supernet(input_shape=(3, 32, 32))


def test_one_hot_and_dense_outputs_match_the_loop(small):
    net, x = small
    arch = [2, 0, 3]
    one_hot = torch.zeros(3, 4)
    one_hot[[0, 1, 2], arch] = 1.0
    expected = by_hand(net, x, one_hot)
    assert net(x, one_hot, [[k] for k in arch], unit_gates=True).shape == (5,)
    assert torch.allclose(net(x, one_hot, [[k] for k in arch], unit_gates=True), expected, atol=1e-6)
    assert torch.allclose(net(x, None, [[k] for k in arch]), expected, atol=1e-6)  # unscaled child
    assert torch.allclose(net.one_hot_output(x, arch), expected, atol=1e-6)          # the teacher's fast path
    assert torch.equal(net.one_hot_output(x, arch), net(x, None, [[k] for k in arch]))
    table = net.single_path_outputs(x)                                              # the evaluation table
    assert torch.allclose(table[:, [0, 1, 2], arch].mean(-1), expected, atol=1e-6)
    soft = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.allclose(net(x, soft, None), by_hand(net, x, soft), atol=1e-6)      # dense mix
    # active restricts the mix: ops 0 and 2 of position 0 only, all ops elsewhere
    masked = soft.clone()
    masked[0, [1, 3]] = 0.0
    assert torch.allclose(net(x, soft, [[0, 2], [0, 1, 2, 3], [0, 1, 2, 3]]), by_hand(net, x, masked), atol=1e-6)


def test_teacher_has_zero_loss_and_both_scorings_agree():
    task = ToyTask(trial=5, eval_batches=3, eval_batch_size=50)
    assert all(task.eval_loss(task.teacher, i) == 0.0 for i in range(3))
    wrong = list(task.teacher)
    wrong[0] = (wrong[0] + 1) % 10
    assert task.eval_loss(wrong, 0) > 1e-4
    child = task.space.build_child(task.teacher)
    assert task.evaluate(child, "test", "cpu") == {"mse": 0.0}
    # the metric (a forward per batch) is the mean of the per-batch table scores the curves use
    mse = task.evaluate(task.space.build_child(wrong), "arch", "cpu")["mse"]
    assert mse == pytest.approx(sum(task.eval_loss(wrong, i) for i in range(3)) / 3, rel=1e-5)
    # training batches: x ~ U[-1, 1] from the trial's own generator, target = the teacher's output
    weights, arch = task.search_streams(100, "cpu", seed=123)
    x, y = next(arch)
    assert torch.equal(x, toy_inputs(torch.Generator().manual_seed(5 + ARCH_DATA), 100))
    assert x.min() >= -1 and x.max() < 1 and x.abs().max() > 0.95
    assert torch.equal(y, child(x)) and not torch.equal(next(weights)[0], x)
    gates = torch.zeros(10, 10)
    gates[torch.arange(10), list(task.teacher)] = 1.0
    student = task.space.build_supernet()
    assert task.loss(lambda x: student(x, gates, [[k] for k in task.teacher], unit_gates=True), (x, y)) == 0.0


def test_the_stream_counts_epochs_and_resumes_mid_epoch():
    """The toy's stream (a ``tasks.base.DrawnStream``): x from the trial's weight generator, an epoch every
    ``steps_per_epoch`` batches, and a state that continues the same batches."""
    task = ToyTask(trial=1, eval_batches=1, steps_per_epoch=3)
    stream = task.train_stream(4, "cpu", seed=99)
    first = [next(stream) for _ in range(4)]
    assert torch.equal(first[0][0], toy_inputs(torch.Generator().manual_seed(1 + WEIGHT_DATA), 4))
    assert (stream.steps, stream.epoch) == (4, 1)
    again = task.train_stream(4, "cpu", seed=99)
    again.load_state_dict(stream.state_dict())
    assert (again.steps, again.epoch) == (4, 1)
    assert torch.equal(next(again)[0], next(stream)[0]) and stream.epoch == 1
    next(stream)
    assert stream.epoch == 2


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


def original_loop(task: ToyTask, method: str, iterations: int, seed: int) -> list[float]:
    """The toy's hand-written loop before it moved onto the engine (one arch step per iteration, evaluated
    every 10): the engine must reproduce its curve to the last bit."""
    strategy = strategies.create(method, task.space, seed=seed, **OPTIMIZER)
    network, data, curve = task.space.build_supernet(), torch.Generator().manual_seed(task.trial + ARCH_DATA), []
    for it in range(iterations + 1):
        if it % 10 == 0:
            curve.append(task.eval_loss(strategy.derive(), it // 10))
        if it == iterations:
            return curve
        strategy.set_schedule(1.0, it / iterations)
        (sample,) = strategy.ask("arch")
        x = toy_inputs(data, 100)
        target = network(x, None, [[k] for k in task.teacher])
        gates = sample.gates.detach().clone().requires_grad_(strategy.needs_gate_grad)
        loss = F.mse_loss(network(x, gates, sample.active, sample.unit, sample.inactive_grad), target)
        grad = torch.autograd.grad(loss, gates)[0] if strategy.needs_gate_grad else None
        strategy.tell([sample], [loss.item()], [grad], "arch")


@pytest.mark.parametrize("method", ["advantage", "reinforce", "gdas", "darts"])
def test_the_engine_reproduces_the_original_loop(method):
    task = toy_task(7, iterations=60)
    assert run_method(task, method, 60, seed=7)["curve"] == original_loop(task, method, 60, seed=7)


def test_toy_search_runs_through_the_trainer_and_resumes():
    task = toy_task(2, iterations=60)
    config = toy_config("advantage", 2, iterations=60, checkpoint_every=20)
    full = Search(config, task, torch.device("cpu"), space=task.space)
    assert full.optimizer is None and not full.trains_weights       # no weights: no optimiser, no weight steps
    whole = MemoryFolder()
    full.run(whole, progress=False)
    assert [r["step"] for r in whole.records] == list(range(10, 61, 10))
    assert all("weight_loss" not in r and r["arch_steps"] == r["step"] for r in whole.records)
    assert whole.result["iterations"] == whole.result["arch_steps"] == 60

    first, folder = Search(config, task, torch.device("cpu"), space=task.space), MemoryFolder(keep_checkpoints=True)
    assert first.run(folder, progress=False, stop_after=40) is None  # as if killed after the checkpoint at 40
    second = Search(config, task, torch.device("cpu"), space=task.space)
    second.load_state_dict(folder.load_checkpoint())
    second.run(folder, progress=False)
    assert folder.result["theta"] == whole.result["theta"]
    assert folder.result["architecture"] == whole.result["architecture"]
    assert [r["architecture"] for r in folder.records] == [r["architecture"] for r in whole.records]


def test_toy_script_prints_the_table_and_refuses_bad_input(capsys, tmp_path):
    assert main(["--trials", "1", "--iterations", "20", "--methods", "advantage", "nasp", "--out",
                 str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "AdvantageNAS" in out and "NASP" in out and "toy.json" in out
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["config"]["methods"] == ["advantage", "nasp"] and len(saved["curves_x100"]["nasp"][0]) == 3
    for argv, fragment in ((["--methods", "nope"], "unknown strategy"), (["--iterations", "25"], "multiple of")):
        assert main(["--trials", "1", "--out", str(tmp_path / "bad"), "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1
        assert err.startswith("experiments/toy.py: error: ") and not (tmp_path / "bad").exists()
