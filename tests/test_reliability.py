"""No lost runs, no code from data files (issue 12): the run folder's overwrite/abandon/lock/resume life, the
configuration inside checkpoints, failing writes, and the CIFAR-10 pickle reader."""

import errno
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from oneshot import runs
from oneshot.data import load_cifar10
from oneshot.errors import UserError
from oneshot.runs import RunFolder, load_or_refuse

REPO = Path(__file__).resolve().parents[1]
OLD = {"space": "nb201", "strategy": "advantage", "seed": 0, "epochs": 3}
NEW = {**OLD, "seed": 1}


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes, and every sub-folder."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert text and "\n" not in text, text
    return text


def checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A finished run as the previous version wrote it, a retraining record, and a file of the user's."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(OLD, indent=2))
    (folder / "log.jsonl").write_text('{"step": 2, "weight_loss": 2.0}\n{"step": 4, "weight_loss": 1.5}\n')
    (folder / "checkpoint.pt").write_bytes(checkpoint_bytes({"step": 4, "w": torch.arange(5.0)}))
    (folder / "result.json").write_text('{"architecture": "old", "iterations": 4}')
    (folder / "search.png").write_bytes(b"\x89PNG old plot")
    (folder / "retrain-cpu.json").write_text('{"test_error_percent": 9.5}')
    (folder / "notes.txt").write_text("the user's own file")
    return folder


# -- 1. --overwrite replaces a run only at the new run's first checkpoint -------------------------------

def test_overwrite_keeps_the_old_run_until_the_first_checkpoint_of_the_new_one(old_run):
    before = snapshot(old_run)
    folder = RunFolder(old_run, NEW, overwrite=True)
    assert json.loads((old_run / "config.json").read_text()) == NEW
    assert not (old_run / "result.json").exists()  # the new run does not show the old result
    kept = {k.split("/", 1)[1]: v for k, v in snapshot(old_run).items() if k.startswith(".previous-run/")}
    assert kept == {k: v for k, v in before.items() if k != "notes.txt"}  # all of the old run, byte for byte
    folder.log({"step": 1, "weight_loss": 3.0})
    assert (old_run / ".previous-run" / "result.json").exists()  # a log line is not a checkpoint
    folder.save_checkpoint({"step": 1})
    assert not (old_run / ".previous-run").exists()
    folder.close()
    assert sorted(p.name for p in old_run.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl", "notes.txt"]
    assert (old_run / "notes.txt").read_text() == "the user's own file"


@pytest.mark.parametrize("how", ["abandon", "context manager", "interrupt"])
def test_a_failure_before_the_first_checkpoint_restores_the_old_run_byte_for_byte(old_run, how):
    before = snapshot(old_run)
    if how == "abandon":
        folder = RunFolder(old_run, NEW, overwrite=True)
        folder.log({"step": 1, "weight_loss": 3.0})
        (old_run / "theta0.pt").write_bytes(b"written by the new run")
        folder.abandon()
    else:
        error = RuntimeError if how == "context manager" else KeyboardInterrupt
        with pytest.raises(error):
            with RunFolder(old_run, NEW, overwrite=True) as folder:
                folder.log({"step": 1, "weight_loss": 3.0})
                raise error("data loading failed")
    assert snapshot(old_run) == before
    with pytest.raises(UserError) as refused:  # and it is still a run that needs --resume or --overwrite
        RunFolder(old_run, NEW)
    assert "already holds a run" in one_line(refused)


def test_after_the_first_checkpoint_a_failure_keeps_the_new_run_for_resume(old_run):
    with pytest.raises(RuntimeError):
        with RunFolder(old_run, NEW, overwrite=True) as folder:
            folder.save_checkpoint({"step": 5})
            raise RuntimeError("NaN loss")
    assert folder.committed and not (old_run / ".previous-run").exists()
    resumed = RunFolder(old_run, NEW, resume=True)
    assert resumed.resumed_state == {"step": 5}


@pytest.mark.parametrize("existed", [False, True])
def test_a_new_folder_that_fails_before_its_first_checkpoint_is_removed_again(tmp_path, existed):
    out = tmp_path / "runs" / "deep" / "run"
    if existed:  # a folder the user made stays, empty, as it was
        out.mkdir(parents=True)
    with pytest.raises(ValueError):
        with RunFolder(out, NEW) as folder:
            folder.log({"step": 1, "weight_loss": 3.0})
            raise ValueError("bad setting found late")
    if existed:
        assert out.is_dir() and list(out.iterdir()) == []
    else:
        assert list(tmp_path.iterdir()) == []  # not even the parents it made
    # so neither a new run nor a --resume is refused afterwards
    with pytest.raises(UserError) as refused:
        RunFolder(out, NEW, resume=True)
    assert "drop --resume" in one_line(refused)
    RunFolder(out, NEW).close()


CHILD = """
import json, sys
from oneshot.runs import RunFolder
path, config, fail = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "fail"
folder = RunFolder(path, config, overwrite=True)
folder.log({"step": 1, "weight_loss": 3.0})
if fail:  # an error before the first checkpoint
    folder.abandon()
    raise SystemExit(1)
folder.save_checkpoint({"step": 1})
folder.save_checkpoint({"step": 2})
"""


def child(path, config, crash=None, fail=False, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ONESHOT_CRASH_AT", None)
    if crash:
        env["ONESHOT_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(config), "fail" if fail else "ok"],
                          env=env, capture_output=True, text=True, timeout=120, **popen)


# Killed while moving the old files aside (after the 1st and the last of 6), inside the first checkpoint
# write, and while putting the old files back after a failure.
@pytest.mark.parametrize("crash, fail", [("overwrite:1", False), ("overwrite:6", False), ("checkpoint:1", False),
                                         ("restore:3", True)])
def test_a_kill_before_the_first_checkpoint_leaves_the_old_run_to_the_next_process(old_run, crash, fail):
    before = snapshot(old_run)
    killed = child(old_run, NEW, crash=crash, fail=fail)
    with pytest.raises(UserError) as refused:  # the next process puts the old run back, then refuses as usual
        RunFolder(old_run, NEW)
    assert "already holds a run" in one_line(refused)
    assert snapshot(old_run) == before
    assert killed.returncode == -9, killed.stderr


def test_resume_after_a_kill_continues_the_new_run_and_drops_the_old_one_at_its_checkpoint(old_run):
    assert child(old_run, NEW, crash="checkpoint:1").returncode == -9
    folder = RunFolder(old_run, NEW, resume=True)  # the retry loop: same command with --resume
    assert folder.resumed_state is None  # no checkpoint: from the beginning
    assert (old_run / ".previous-run" / "result.json").exists()
    folder.abandon()  # an error in this attempt too: the new run stays pending, the old one kept
    assert (old_run / ".previous-run" / "result.json").exists()
    folder = RunFolder(old_run, NEW, resume=True)
    folder.save_checkpoint({"step": 1})
    assert not (old_run / ".previous-run").exists() and not (old_run / "result.json").exists()


def test_a_kill_after_the_first_checkpoint_keeps_the_new_run(old_run):
    assert child(old_run, NEW, crash="checkpoint:2").returncode == -9
    assert torch.load(old_run / "checkpoint.pt", weights_only=True)["step"] == 1
    folder = RunFolder(old_run, NEW, resume=True)
    assert folder.resumed_state == {"step": 1}
    assert not (old_run / ".previous-run").exists()


# -- 2. one writer at a time -----------------------------------------------------------------------------

@pytest.mark.parametrize("second", [dict(), dict(resume=True), dict(overwrite=True)])
def test_a_second_writer_is_refused_before_it_changes_anything(old_run, second):
    first = RunFolder(old_run, OLD, resume=True)
    during = snapshot(old_run)
    with pytest.raises(UserError) as refused:
        RunFolder(old_run, OLD, **second)
    assert f"in use by another oneshot process (PID {os.getpid()})" in one_line(refused)
    assert snapshot(old_run) == during
    reader = RunFolder(old_run, OLD, resume=True, writer=False)  # torchrun's other ranks take no lock
    assert reader.resumed_state["step"] == 4
    first.close()
    assert not (old_run / runs.LOCK).exists()
    RunFolder(old_run, OLD, resume=True).close()  # free again


def test_a_run_in_another_process_is_not_disturbed(old_run):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, json\nfrom oneshot.runs import RunFolder\n"
         "f = RunFolder(sys.argv[1], json.loads(sys.argv[2]), overwrite=True)\nprint('ready', flush=True)\n"
         "sys.stdin.readline()\nf.save_checkpoint({'step': 7})\nf.close()\n", str(old_run), json.dumps(NEW)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        during = snapshot(old_run)
        for second in (dict(), dict(resume=True), dict(overwrite=True)):
            with pytest.raises(UserError) as refused:
                RunFolder(old_run, NEW, **second)
            assert f"(PID {holder.pid})" in one_line(refused)
        assert snapshot(old_run) == during
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert RunFolder(old_run, NEW, resume=True).resumed_state == {"step": 7}


# -- 3. --resume -----------------------------------------------------------------------------------------

def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(OLD))
    (out / "log.jsonl").write_text('{"step": 1, "weight_loss": 1}\n')
    (out / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint, orphaned by a kill")
    folder = RunFolder(out, OLD, resume=True)
    assert folder.resumed_state is None
    folder.close()
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the orphaned temporary file is gone too


@pytest.mark.parametrize("make, fix, wrong_fix", [
    (lambda out: None, "drop --resume", "--overwrite"),
    (lambda out: out.mkdir(), "drop --resume", "--overwrite"),
    (lambda out: (out.mkdir(), (out / "result.json").write_text("{}")), "--overwrite", "drop --resume"),
])
def test_nothing_to_resume_gives_advice_that_works(tmp_path, make, fix, wrong_fix):
    out = tmp_path / "run"
    make(out)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as refused:
        RunFolder(out, OLD, resume=True)
    line = one_line(refused)
    assert "nothing to resume" in line and fix in line and wrong_fix not in line
    assert snapshot(tmp_path) == before


# -- 4. the settings inside each checkpoint, and loads that fail -----------------------------------------

def test_each_checkpoint_holds_the_run_settings_and_resume_returns_the_state_as_saved(tmp_path):
    folder = RunFolder(tmp_path / "run", NEW)
    folder.save_checkpoint({"step": 3, "w": torch.ones(2)})
    folder.close()
    stored = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert json.loads(stored[runs.CONFIG_KEY]) == NEW
    state = RunFolder(tmp_path / "run", NEW, resume=True).resumed_state
    assert set(state) == {"step", "w"} and torch.equal(state["w"], torch.ones(2))


def other_runs_checkpoint(out: Path) -> None:
    other = RunFolder(out.parent / "other", OLD)
    other.save_checkpoint({"step": 3})
    other.close()
    (out / "checkpoint.pt").write_bytes((out.parent / "other" / "checkpoint.pt").read_bytes())


BAD_CHECKPOINTS = {
    "not a zip": (lambda out: (out / "checkpoint.pt").write_bytes(b"not a checkpoint"), "is corrupt"),
    "truncated": (lambda out: (out / "checkpoint.pt").write_bytes(checkpoint_bytes({"step": 1, "w": torch.ones(999)})[:900]),
                  "is corrupt"),
    "no step": (lambda out: (out / "checkpoint.pt").write_bytes(checkpoint_bytes({"model": {}})), "no 'step'"),
    "not a dict": (lambda out: (out / "checkpoint.pt").write_bytes(checkpoint_bytes([1, 2])), "no 'step'"),
    "another run": (other_runs_checkpoint, "other settings (seed)"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_checkpoint_that_cannot_be_used_is_refused_in_one_line_with_a_fix_that_works(tmp_path, case):
    out = tmp_path / "run"
    folder = RunFolder(out, NEW)
    folder.log({"step": 1, "weight_loss": 1.0})
    folder.close()
    damage, fragment = BAD_CHECKPOINTS[case]
    damage(out)
    before = snapshot(out)
    with pytest.raises(UserError) as refused:
        RunFolder(out, NEW, resume=True)
    line = one_line(refused)
    assert str(out / "checkpoint.pt") in line and fragment in line
    assert "--resume to restart the run from the beginning" in line and "--overwrite" in line
    assert snapshot(out) == before  # refused, and nothing changed
    (out / "checkpoint.pt").rename(tmp_path / "moved-away.pt")  # follow the advice: it works
    assert RunFolder(out, NEW, resume=True).resumed_state is None


def test_a_state_dict_that_does_not_fit_is_refused_in_one_line(tmp_path):
    model = torch.nn.Linear(3, 2)
    wrong_shape = {"weight": torch.zeros(4, 3), "bias": torch.zeros(2)}
    with pytest.raises(UserError) as refused:
        load_or_refuse(lambda: model.load_state_dict(wrong_shape), tmp_path / "checkpoint.pt")
    line = one_line(refused)
    assert line.startswith(f"{tmp_path / 'checkpoint.pt'} does not fit this run (RuntimeError: ")
    assert len(line) < 400
    with pytest.raises(UserError) as refused:
        load_or_refuse(lambda: {}["model"], "ck.pt")
    assert "(KeyError: 'model')" in one_line(refused)
    with pytest.raises(UserError, match="^own message$"):  # a UserError keeps its own words
        load_or_refuse(lambda: (_ for _ in ()).throw(UserError("own message")), "ck.pt")
    assert load_or_refuse(lambda: 42, "ck.pt") == 42

    folder = RunFolder(tmp_path / "run", NEW)
    folder.save_checkpoint({"step": 1, "model": wrong_shape})
    folder.close()
    resumed = RunFolder(tmp_path / "run", NEW, resume=True)
    with pytest.raises(UserError) as refused:
        resumed.restore(lambda state: model.load_state_dict(state["model"]))
    assert "checkpoint.pt does not fit this run" in one_line(refused)
    assert resumed.restore(lambda state: None) is True
    assert RunFolder(tmp_path / "new", NEW).restore(lambda state: 1 / 0) is False


# -- 5. writes that fail ---------------------------------------------------------------------------------

def fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("where, code", [("fsync", errno.ENOSPC), ("replace", errno.EIO)])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where, code):
    out = tmp_path / "run"
    folder = RunFolder(out, NEW)
    folder.save_checkpoint({"step": 1, "w": torch.ones(3)})
    good = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(runs.os, where, fail_with(code))
    with pytest.raises(UserError) as refused:
        folder.save_checkpoint({"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    line = one_line(refused)
    assert f"cannot write checkpoint.pt in the run folder {out} ({os.strerror(code)})" in line
    assert "--resume continues from the last checkpoint" in line
    assert not (out / "checkpoint.pt.tmp").exists()
    assert (out / "checkpoint.pt").read_bytes() == good
    folder.close()
    assert RunFolder(out, NEW, resume=True).resumed_state["step"] == 1  # the advice works


def test_a_full_disk_inside_the_serialiser_is_caught_too(tmp_path, monkeypatch):
    """On a real full disk, torch.save into a file fails inside its zip writer with a RuntimeError, not an
    OSError (tried on /dev/full); here every write() of the file fails as it does on /dev/full."""

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    folder = RunFolder(out, NEW)
    monkeypatch.setattr(runs, "open", lambda path, mode="r", *a, **k: FullDisk(path, "wb"), raising=False)
    with pytest.raises(UserError) as refused:
        folder.save_checkpoint({"step": 1, "w": torch.ones(1000)})
    line = one_line(refused)
    assert "No space left on device" in line and "run the same command again" in line
    assert not (out / "checkpoint.pt.tmp").exists() and not (out / "checkpoint.pt").exists()


def test_a_failed_first_checkpoint_under_overwrite_gives_back_the_old_run(old_run, monkeypatch):
    before = snapshot(old_run)
    with pytest.raises(UserError) as refused:
        with RunFolder(old_run, NEW, overwrite=True) as folder:
            monkeypatch.setattr(runs.os, "fsync", fail_with(errno.ENOSPC))
            folder.save_checkpoint({"step": 1})
    monkeypatch.undo()
    assert "run the same command again" in one_line(refused)
    assert snapshot(old_run) == before


@pytest.mark.parametrize("write", ["result", "log"])
def test_failed_result_and_log_writes_are_one_line(tmp_path, monkeypatch, write):
    out = tmp_path / "run"
    folder = RunFolder(out, NEW)
    folder.save_checkpoint({"step": 1})
    if write == "result":
        monkeypatch.setattr(runs.os, "fsync", fail_with(errno.ENOSPC))
        with pytest.raises(UserError) as refused:
            folder.write_result({"architecture": "x"})
        assert not (out / "result.json").exists() and not (out / "result.json.tmp").exists()
    else:
        monkeypatch.setattr(runs, "open", fail_with(errno.EIO), raising=False)
        with pytest.raises(UserError) as refused:
            folder.log({"step": 1, "weight_loss": 1.0})
    line = one_line(refused)
    assert str(out) in line and "--resume" in line


# -- 6. CIFAR-10 pickles can build numpy arrays and nothing else ------------------------------------------

class Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official files: protocol 2, every str and bytes as a
    Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), numpy's reconstructor under its numpy 1 name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def python2_batch(batch: dict) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(batch)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def write_batches(root: Path, dumps, sizes=(6, 6, 6, 6, 6, 5), evil=None) -> dict:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, sizes):
        batch = {b"batch_label": "training batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [f"img_{i}.png" for i in range(n)]}
        if evil is not None and name == "data_batch_1":
            batch[b"data"] = evil
        (root / name).write_bytes(dumps(batch))
        written[name] = batch
    return written


def test_batches_in_the_official_python2_format_load(tmp_path):
    written = write_batches(tmp_path / "cifar-10-batches-py", python2_batch)
    ops = {(op.name, arg) for op, arg, _ in pickletools.genops((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())}
    globals_named = {arg for name, arg in ops if name == "GLOBAL"}
    assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not {name for name, _ in ops} & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
    data = load_cifar10(tmp_path / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    expected = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert torch.equal(data.train_x, torch.from_numpy(expected.reshape(-1, 3, 32, 32)))
    assert data.train_y.tolist() == sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert data.test_x.shape == (5, 3, 32, 32) and data.test_y.tolist() == written["test_batch"][b"labels"]


@pytest.mark.parametrize("protocol", [4, 5])  # 4: Python 3.8+'s default (numpy's _reconstruct); 5: _frombuffer
def test_batches_pickled_by_this_python_load(tmp_path, protocol):
    write_batches(tmp_path / "b", lambda batch: pickle.dumps(batch, protocol=protocol))
    assert load_cifar10(tmp_path / "b", cache_dir=tmp_path / "cache").train_x.shape == (30, 3, 32, 32)


class CreatesMarker:
    """A pickle payload that creates a file when unpickled by a plain ``pickle.loads``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("packed", [False, True])
def test_a_data_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, packed):
    marker = tmp_path / "pwned"
    evil = CreatesMarker(marker)
    assert not marker.exists()
    root = tmp_path / "cifar-10-batches-py"
    write_batches(root, pickle.dumps, evil=evil)
    source = root
    if packed:
        source = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(root, arcname="cifar-10-batches-py")
    with pytest.raises(UserError) as refused:
        load_cifar10(source, cache_dir=tmp_path / "cache")
    line = one_line(refused)
    assert line.startswith("refusing to load ") and "data_batch_1" in line and "it asks to run io.open" in line
    assert not marker.exists()
    pickle.loads((root / "data_batch_1").read_bytes())  # the payload is real: a plain unpickler runs it
    assert marker.exists()


@pytest.mark.parametrize("module, name", [("os", "system"), ("numpy", "load"), ("numpy.core.multiarray", "scalar"),
                                          ("builtins", "eval"), ("numpy", "frombuffer")])
def test_only_numpy_array_reconstruction_is_allowed(module, name):
    from oneshot.data import _BatchUnpickler

    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UserError, match=f"^refusing to load here: it asks to run {module}.{name}"):
        _BatchUnpickler(payload, "here").load()


def test_a_folder_object_dropped_without_close_frees_the_lock(tmp_path):
    """As in tests that pass ``RunFolder(...)`` straight to ``Search.run`` and then resume in the same process."""
    RunFolder(tmp_path / "run", NEW).save_checkpoint({"step": 2})
    assert not (tmp_path / "run" / runs.LOCK).exists()
    assert RunFolder(tmp_path / "run", NEW, resume=True).resumed_state == {"step": 2}


def test_a_finished_run_leaves_exactly_its_files(old_run):
    with RunFolder(old_run, NEW, overwrite=True) as folder:
        folder.log({"step": 1, "weight_loss": 2.0, "nb201_cifar10": 90.0})
        folder.save_checkpoint({"step": 1})
        folder.write_result({"architecture": "new"})
    assert sorted(p.name for p in old_run.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl", "notes.txt",
                                                           "result.json", "search.png"]
    assert (old_run / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((old_run / "result.json").read_text()) == {"architecture": "new"}


def test_an_overwrite_that_cannot_move_the_old_run_aside_changes_nothing(old_run, monkeypatch):
    before = snapshot(old_run)
    real_replace = os.replace

    def refuse_the_third(source, target, calls=[]):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return real_replace(source, target)

    monkeypatch.setattr(runs.os, "replace", refuse_the_third)
    with pytest.raises(UserError) as refused:
        RunFolder(old_run, NEW, overwrite=True)
    monkeypatch.undo()
    assert f"cannot change the run folder {old_run} (Operation not permitted)" in one_line(refused)
    assert snapshot(old_run) == before
