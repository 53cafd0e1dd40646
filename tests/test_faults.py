"""Kill a search with SIGKILL at several points, resume it, and get exactly the uninterrupted result;
and a 2-process gloo run equals a 1-process run over the same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

TINY = ["--preset", "smoke", "--set", "n_weight=256", "--set", "n_arch=256", "--set", "batch_size=32",
        "--set", "epochs=3", "--set", "warmup_epochs=1", "--set", "checkpoint_every=5", "--set", "log_every=3",
        "--quiet", "--device", "cpu"]
TIMING = ("search_seconds", "cpu_seconds")


def oneshot(*args, crash=None, launcher=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ONESHOT_CRASH_AT", None)
    if crash:
        env["ONESHOT_CRASH_AT"] = crash
    cmd = (launcher or [sys.executable, "-m"]) + ["oneshot", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def result(folder):
    r = json.loads((folder / "result.json").read_text())
    return {k: v for k, v in r.items() if k not in TIMING}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_pickles):
    out = tmp_path_factory.mktemp("full") / "run"
    done = oneshot("search", "--data", tiny_pickles, "--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    return out


# 8 iterations per epoch, 24 in all; checkpoints after iterations 5, 8, 10, 15, 16, 20, 24.
@pytest.mark.parametrize("crash", ["step:2", "checkpoint:1", "step:13", "checkpoint:4", "step:23", "checkpoint:7"])
def test_killed_and_resumed_search_ends_like_an_uninterrupted_one(tmp_path, tiny_pickles, uninterrupted, crash):
    out = tmp_path / "run"
    killed = oneshot("search", "--data", tiny_pickles, "--out", str(out), *TINY, crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "result.json").exists()
    resumed = oneshot("search", "--data", tiny_pickles, "--out", str(out), *TINY, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert result(out) == result(uninterrupted)  # architecture, NB201 numbers, θ, best sampled, step counts
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in (p / "log.jsonl").read_text().splitlines()]
    assert strip(out) == strip(uninterrupted)
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy", ["advantage", "reinforce"])
def test_two_gloo_processes_equal_one_process_over_the_same_global_batch(tmp_path, tiny_pickles, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    single = oneshot("search", "--strategy", strategy, "--data", tiny_pickles, "--out", str(one), *TINY,
                     "--set", "micro_batches=2")
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), "-m"]
    double = oneshot("search", "--strategy", strategy, "--data", tiny_pickles, "--out", str(two), *TINY,
                     launcher=launcher)
    assert double.returncode == 0, double.stderr
    r1, r2 = result(one), result(two)
    assert r1["architecture"] == r2["architecture"]
    assert torch.allclose(torch.tensor(r1["theta"]), torch.tensor(r2["theta"]), atol=1e-6)
    w1 = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    w2 = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
    params = [k for k in w1 if "running_" not in k and "num_batches" not in k]
    assert len(params) > 20
    for k in params:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
