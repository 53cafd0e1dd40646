import json

import pytest
import torch

from oneshot.cli import main
from oneshot.config import preset
from oneshot.runs import RunFolder
from oneshot.trainer import Search


def tiny_config(strategy="advantage", **changes):
    return preset("smoke", strategy=strategy, n_weight=256, n_arch=256, batch_size=32, epochs=3, warmup_epochs=1,
                  checkpoint_every=5, log_every=3, **changes)


@pytest.mark.parametrize("strategy", ["advantage", "advantage_wb", "reinforce", "random"])
def test_resume_after_interruption_ends_exactly_like_an_uninterrupted_run(tmp_path, synthetic_cifar, strategy):
    config = tiny_config(strategy)
    full = Search(config, synthetic_cifar, torch.device("cpu"))
    full_result = full.run(RunFolder(tmp_path / "full", config.to_dict()), progress=False)

    first = Search(config, synthetic_cifar, torch.device("cpu"))
    # 8 steps per epoch: stop at 13 (last checkpoint at 10) so that 3 steps are lost and redone
    assert first.run(RunFolder(tmp_path / "cut", config.to_dict()), progress=False, stop_after=13) is None
    folder = RunFolder(tmp_path / "cut", config.to_dict(), resume=True)
    assert folder.resumed_state["step"] == 10
    second = Search(config, synthetic_cifar, torch.device("cpu"))
    second.load_state_dict(folder.resumed_state)
    resumed_result = second.run(folder, progress=False)

    for key in ("architecture", "iterations", "arch_steps", "best_sampled", "theta"):
        assert resumed_result.get(key) == full_result.get(key), key
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    # the log of the resumed run is the log of the full run (no duplicated or missing lines)
    lines = lambda p: [json.loads(l) for l in (p / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines(tmp_path / "cut")] == [r["step"] for r in lines(tmp_path / "full")]
    assert [r.get("architecture") for r in lines(tmp_path / "cut")] == [r.get("architecture") for r in lines(tmp_path / "full")]


def test_arch_steps_follow_the_protocol(tmp_path, synthetic_cifar):
    config = tiny_config(strategy_options={"weight_decay": 0.0})  # θ moves by the estimator alone
    search = Search(config, synthetic_cifar, torch.device("cpu"))
    result = search.run(RunFolder(tmp_path, config.to_dict()), progress=False)
    steps_per_epoch = 256 // 32
    assert result["iterations"] == 3 * steps_per_epoch
    assert result["arch_steps"] == 2 * steps_per_epoch  # one before each weight step after 1 warm-up epoch
    theta = torch.tensor(result["theta"])
    assert (theta - 1).abs().max() > 1e-3  # the estimator moved θ (with weight decay 0, nothing else can)


def test_smoke_search_on_real_cifar(tmp_path, cifar_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--space", "nb201", "--strategy", "advantage", "--preset", "smoke", "--data", cifar_path,
                 "--seed", "1", "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert {"space", "strategy", "seed", "architecture", "nb201", "search_seconds"} <= set(result)
    assert result["space"] == "nb201" and result["strategy"] == "advantage" and result["seed"] == 1
    assert 10.0 < result["nb201"]["cifar10"] < 94.4
    assert 1 <= result["nb201"]["cifar10_rank"] <= 15625
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "search.png"):
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == result["iterations"] == 16 and records[-1]["arch_steps"] == 8
    assert "NB201 CIFAR-10" in capsys.readouterr().out


@pytest.mark.parametrize("keep", [False, True])
def test_keep_zero_grads_lets_an_unsampled_op_decay_as_abs_code_did(synthetic_cifar, keep):
    """ABS's code ran torch < 2.0, whose zero_grad left zeros: an op that ran once keeps getting weight decay and
    momentum when it is not sampled. ``w_keep_zero_grads`` reproduces that; by default it does not move."""
    config = tiny_config("random").replace(w_keep_zero_grads=keep, warmup_epochs=0)
    search = Search(config, synthetic_cifar, torch.device("cpu"))
    one, other = (2,) * 6, (1,) * 6
    plan = iter([one, other])
    search.strategy.ask = lambda phase: [search.strategy.one_hot_sample(next(plan))]
    key = next(k for k in search.model.state_dict() if ".edges.0.ops.2." in k and k.endswith("weight"))
    search.weight_step("weight")                       # op 2 runs on every edge
    after_first = search.model.state_dict()[key].clone()
    search.weight_step("weight")                       # op 1 runs; op 2 does not
    moved = not torch.equal(search.model.state_dict()[key], after_first)
    assert moved == keep
