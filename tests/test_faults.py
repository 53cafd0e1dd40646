"""Kill a search with SIGKILL at several points, resume it, and get exactly the uninterrupted result (also at
random moments of a fresh run and of an --overwrite of a finished one, where the old run must survive until the
new one checkpoints); a second writer is refused while a search runs; and a 2-process gloo run equals a
1-process run over the same global batch."""

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oneshot.errors import UserError
from oneshot.runs import LOCK, RUN_FILES, RunFolder

TINY = ["--preset", "smoke", "--set", "n_weight=256", "--set", "n_arch=256", "--set", "batch_size=32",
        "--set", "epochs=3", "--set", "warmup_epochs=1", "--set", "checkpoint_every=5", "--set", "log_every=3",
        "--quiet", "--device", "cpu"]
TIMING = ("search_seconds", "cpu_seconds", "versions")


@pytest.fixture(scope="module", autouse=True)
def own_data_cache(tmp_path_factory):
    """The processes here cache decoded data in a folder of their own, not in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESHOT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def environment(crash=None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ONESHOT_CRASH_AT", None)
    if crash:
        env["ONESHOT_CRASH_AT"] = crash
    return env


def oneshot(*args, crash=None, launcher=None):
    cmd = (launcher or [sys.executable, "-m"]) + ["oneshot", *args]
    return subprocess.run(cmd, env=environment(crash), capture_output=True, text=True, timeout=300)


def start(*args, crash=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oneshot", *args], env=environment(crash), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def result(folder):
    r = json.loads((folder / "result.json").read_text())
    return {k: v for k, v in r.items() if k not in TIMING}


def log_lines(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "log.jsonl").read_text().splitlines()]


def assert_same_run(out, reference):
    """The same result (timing and versions aside), log and final weights as the uninterrupted run."""
    assert result(out) == result(reference)
    assert log_lines(out) == log_lines(reference)
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    assert_same_run(out, uninterrupted)  # architecture, NB201 numbers, θ, best sampled, step counts, log, weights


# -- SIGKILL at random moments, then the retry loop ------------------------------------------------------
# TINY runs 24 iterations and checkpoints after these (every 5, and at each epoch's end).
TOTAL_STEPS = 24
CHECKPOINTS = (5, 8, 10, 15, 16, 20, 24)
# The finished run that an --overwrite replaces: other settings, 4 iterations, a few seconds to make.
OLD = ["--preset", "smoke", "--set", "n_weight=64", "--set", "n_arch=64", "--set", "batch_size=32", "--set", "epochs=2",
       "--set", "warmup_epochs=1", "--seed", "1", "--quiet", "--device", "cpu"]
BLOCKING_BATCH = "data_batch_2"  # read after data_batch_1, which must stay a plain file to be found at all


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes, and every sub-folder."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def private_data(tmp_path, tiny_pickles) -> Path:
    """A copy of the tiny pickles: a kill during data loading swaps one batch for a pipe for a moment."""
    data = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(tiny_pickles, data)
    return data


def killed_at(moment, args, data: Path) -> subprocess.CompletedProcess:
    """Run ``oneshot *args`` and kill it with SIGKILL at ``moment``:
    ("crash", "step:7") a crash point of the library (runs.crash_point);
    ("after", 1.3) seconds of wall-clock time (the process may have ended by then: nothing is killed);
    ("loading", n) while it loads its data: data_batch_2 is a named pipe that gets the batch's first n bytes
    and then waits, so the process is caught inside the read."""
    kind, value = moment
    if kind == "crash":
        return oneshot(*args, crash=value)
    if kind == "after":
        process = start(*args)
        try:
            process.wait(timeout=value)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        out, err = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    batch = data / BLOCKING_BATCH
    content = batch.read_bytes()
    batch.unlink()
    os.mkfifo(batch)
    process, writer = start(*args), None
    try:
        deadline = time.monotonic() + 240
        while writer is None:  # a non-blocking open for writing succeeds once the reader has the pipe open
            try:
                writer = os.open(batch, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the search never read its data"
                time.sleep(0.01)
        os.set_blocking(writer, True)
        sent = 0
        while sent < value:
            sent += os.write(writer, content[sent:value])
        process.send_signal(signal.SIGKILL)  # blocked in the read: the rest of the batch never comes
        out, err = process.communicate(timeout=300)
    finally:
        if writer is not None:
            os.close(writer)
        if process.poll() is None:
            process.kill()
            process.wait()
        batch.unlink()
        batch.write_bytes(content)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def checkpointed_step(out: Path, old_checkpoint: bytes | None = None) -> int:
    """The iteration the new run's checkpoint holds (0: none yet; the replaced run's checkpoint does not count)."""
    file = out / "checkpoint.pt"
    if not file.exists() or file.read_bytes() == old_checkpoint:
        return 0
    return torch.load(file, weights_only=True)["step"]


def pick(kind: str, rng: random.Random, out: Path, data: Path, old_checkpoint: bytes | None = None):
    """A random moment of the given kind that the next attempt is sure to reach (wall-clock ones aside)."""
    done = checkpointed_step(out, old_checkpoint)
    if kind == "loading":
        return ("loading", rng.randrange((data / BLOCKING_BATCH).stat().st_size))
    if kind == "after":
        return ("after", round(rng.uniform(0.2, 5.0), 2))
    if kind in ("overwrite", "restore"):  # moving the old run's files aside, or back after a kill
        moving = out / ".previous-run.partial"
        files = len(os.listdir(moving)) if kind == "restore" else sum(p.name in RUN_FILES for p in out.iterdir())
        return ("crash", f"{kind}:{rng.randint(1, files)}")
    later = [c for c in CHECKPOINTS if c > done]
    if kind == "checkpoint" and later:
        return ("crash", f"checkpoint:{rng.randint(1, len(later))}")
    return ("crash", f"step:{rng.randint(1, TOTAL_STEPS - done)}") if done < TOTAL_STEPS else ("after", 0.5)


def old_run_after_recovery(out: Path, scratch: Path) -> dict:
    """What the next process to open ``out`` makes of it: a copy is opened as a new run without --resume or
    --overwrite, which finishes any half-done move, puts an old run kept aside back, and is refused."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(out, scratch, symlinks=True)
    with pytest.raises(UserError, match="already holds a run"):
        RunFolder(scratch, {"any": "settings"})
    return snapshot(scratch)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("oneshot: error: "), stderr
    return lines[0]


def test_sigkill_at_random_moments_of_a_new_search_and_the_retry_loop_ends_like_an_uninterrupted_run(
        tmp_path, tiny_pickles, uninterrupted):
    rng = random.Random(1201)
    data = private_data(tmp_path, tiny_pickles)
    out = tmp_path / "run"
    command = ["search", "--data", str(data), "--out", str(out), *TINY]
    flags, kills = [], 0
    for kind in ("loading", "step", "after", "checkpoint", "step", "after"):
        moment = pick(kind, rng, out, data)
        attempt = killed_at(moment, command + flags, data)
        if kind == "after" and attempt.returncode == 0:
            break  # it ended before the clock ran out: the retry loop is done
        assert attempt.returncode == -signal.SIGKILL, (moment, attempt.stderr)
        kills += 1
        if kind == "loading":
            assert not out.exists(), "the run folder was touched before the data was loaded"
        # The retry loop: the same command with --resume, once there is a run to resume (a kill before the
        # folder had its config.json left nothing: --resume says "drop --resume" then).
        flags = ["--resume"] if (out / "config.json").exists() else []
    else:
        finished = oneshot(*command, *flags)
        assert finished.returncode == 0, finished.stderr
    assert kills >= 4
    assert_same_run(out, uninterrupted)
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)  # no lock, temporary file or old run left


def test_sigkill_at_random_moments_of_an_overwrite_keeps_the_old_run_until_the_new_one_checkpoints(
        tmp_path, tiny_pickles, uninterrupted):
    rng = random.Random(1202)
    data = private_data(tmp_path, tiny_pickles)
    out = tmp_path / "run"
    made = oneshot("search", "--data", str(data), "--out", str(out), *OLD)
    assert made.returncode == 0, made.stderr
    (out / "notes.txt").write_text("the user's own file")
    old = snapshot(out)
    assert {"result.json", "checkpoint.pt", "search.png", "log.jsonl", "config.json"} <= set(old)
    command = ["search", "--data", str(data), "--out", str(out), *TINY]
    flags, kills, refusals = ["--overwrite"], 0, 0
    plan = ["loading", "overwrite", "restore", "checkpoint", "step", "after", "checkpoint"]
    while plan:
        kind = plan[0]
        moment = pick(kind, rng, out, data, old["checkpoint.pt"])
        if kind == "checkpoint" and flags == ["--overwrite"]:
            moment = ("crash", "checkpoint:1")  # inside the new run's first checkpoint write
        attempt = killed_at(moment, command + flags, data)
        if flags == ["--resume"] and attempt.returncode == 2:
            # Refused: the kill came before the new run wrote its settings, so the folder still holds the old
            # run, unchanged; the retry loop starts the overwrite again.
            assert "--resume with different settings" in one_error_line(attempt.stderr)
            assert snapshot(out) == old
            refusals += 1
            flags = ["--overwrite"]
            continue
        plan.pop(0)
        if kind == "after" and attempt.returncode == 0:
            break
        assert attempt.returncode == -signal.SIGKILL, (moment, flags, attempt.stderr)
        kills += 1
        if kind == "loading":
            assert snapshot(out) == old  # not even locked: the folder is opened after the data is loaded
        if not checkpointed_step(out, old["checkpoint.pt"]):  # the new run never checkpointed
            assert old_run_after_recovery(out, tmp_path / "scratch") == old
        flags = ["--resume"]
    else:
        finished = oneshot(*command, *flags)
        if finished.returncode == 2:  # the last kill left the old run: once more from the start
            assert "--resume with different settings" in one_error_line(finished.stderr)
            finished = oneshot(*command, "--overwrite")
        assert finished.returncode == 0, finished.stderr
    assert kills >= 6 and refusals >= 1
    assert_same_run(out, uninterrupted)
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, "notes.txt"])
    assert (out / "notes.txt").read_text() == "the user's own file"


# -- one writer per folder -------------------------------------------------------------------------------

def wait_until_it_holds_the_lock(out: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while True:
        try:
            if (out / LOCK).read_text().strip() == str(process.pid):
                return
        except FileNotFoundError:
            pass
        assert process.poll() is None, f"the search ended before it was seen holding its lock: {process.stderr.read()}"
        assert time.monotonic() < deadline, "the search never locked its folder"
        time.sleep(0.005)


def test_a_second_search_resume_or_overwrite_on_a_folder_in_use_is_refused_and_the_run_is_unaffected(
        tmp_path, tiny_pickles, uninterrupted):
    out = tmp_path / "run"
    command = ["search", "--data", tiny_pickles, "--out", str(out), *TINY]
    first = start(*command)
    try:
        wait_until_it_holds_the_lock(out, first)
        first.send_signal(signal.SIGSTOP)  # paused mid-run, holding its lock, for as long as the others take
        during = snapshot(out)
        for flags in ([], ["--resume"], ["--overwrite"]):
            second = oneshot(*command, *flags)
            assert second.returncode == 2, (flags, second.stderr)
            line = one_error_line(second.stderr)
            assert f"{out} is in use by another oneshot process (PID {first.pid})" in line, flags
            assert snapshot(out) == during, flags
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert_same_run(out, uninterrupted)
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)


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
