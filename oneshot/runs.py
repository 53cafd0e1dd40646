"""A run folder: config.json, log.jsonl, checkpoint.pt, result.json and a plot, written so that no work is lost.

- Checkpoints and results are written to a temporary file and renamed, so a kill leaves either the old or the
  new file, never half of one; a write that fails (disk full, I/O error) removes the temporary file, keeps
  the previous file and ends in one line.
- A folder that already holds a run is refused unless the user says ``--resume`` (continue it) or
  ``--overwrite`` (start again). ``--overwrite`` moves the old run's files into ``.previous-run/`` inside the
  folder; they are deleted only when the new run writes its first checkpoint, and put back by ``abandon()``
  (any error before that) or, after a kill, by the next process that opens the folder.
- A writer holds an exclusive lock (``flock`` on ``.oneshot.lock``, which holds its PID) for the run's life,
  taken before anything in the folder changes, so a second writer is refused instead of interleaving.

Use it as a context manager, so that an error before the first checkpoint leaves the folder as it was::

    with RunFolder(out, config, resume=..., overwrite=...) as folder:
        ...load data, build the search...
        folder.restore(search.load_state_dict)
        search.run(folder)
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "result.json", "search.png")
# What an --overwrite moves aside: the run's files, what ABS and 'retrain' write beside them, and temporaries.
RUN_ENTRIES = RUN_FILES + ("theta0.pt", "shrink.json", "retrain*.json", "retrain-*", "tensorboard")
LOCK = ".oneshot.lock"
ASIDE = ".previous-run"  # the replaced run, until the new one has a checkpoint
MOVING = ".previous-run.partial"  # files on their way into or out of ASIDE: all of them belong to the old run
CONFIG_KEY = "run_config"  # the settings, stored inside each checkpoint
_crash_counts: dict[str, int] = {}
T = TypeVar("T")


def crash_point(name: str) -> None:
    """Fault injection for the kill-and-resume tests: ``ONESHOT_CRASH_AT=name:N`` kills this process with
    SIGKILL the N-th time it passes ``name`` (e.g. ``step:13``, ``checkpoint:2`` = inside the 2nd checkpoint
    write, after the temporary file is written and before it replaces the old checkpoint, ``overwrite:2`` =
    after the 2nd old file is moved aside, ``restore:1`` = after the 1st old file is moved back)."""
    target = os.environ.get("ONESHOT_CRASH_AT")
    if not target or not target.startswith(name + ":"):
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(target.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, data: bytes | Callable, crash: str | None = None) -> None:
    """Write ``data`` (bytes, or a function that writes into a binary handle) to ``path`` all or nothing.

    The bytes are built in memory first: a full disk then fails in our own ``write``/``fsync`` with an
    OSError, not somewhere inside a serialiser. On any failure the temporary file is removed (an orphan
    would keep the disk full) and the old ``path`` is untouched."""
    if callable(data):
        buffer = io.BytesIO()
        data(buffer)
        data = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if crash:
            crash_point(crash)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def load_or_refuse(load: Callable[[], T], path) -> T:
    """``load()`` (e.g. ``lambda: search.load_state_dict(state)``), with any failure, a state dict with
    missing keys or tensors of other shapes, turned into one line that names ``path`` and a fix."""
    try:
        return load()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} does not fit this run ({_first_line(e)}); move it away and --resume to restart "
                        "the run from the beginning, or --overwrite to start again") from None


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split("\n", 1)[0].split())
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _normal(config: dict):
    """Config as it reads back from JSON (tuples become lists), so saved and new settings compare equal."""
    return json.loads(json.dumps(config))


def _filled(saved, defaults: dict):
    """``saved`` with every key of ``defaults`` it lacks, at any depth of nested settings."""
    if not isinstance(saved, dict):
        return saved
    filled = {k: v for k, v in defaults.items() if k not in saved}
    for k, v in saved.items():
        filled[k] = _filled(v, defaults[k]) if isinstance(defaults.get(k), dict) else v
    return filled


def _belongs_to_run(name: str) -> bool:
    base = name[:-len(".tmp")] if name.endswith(".tmp") else name
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in RUN_ENTRIES)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunFolder:
    """``writer=False`` (the non-zero ranks of a distributed run) reads a checkpoint to resume but writes
    nothing and takes no lock."""

    def __init__(self, path: str | os.PathLike, config: dict, resume: bool = False, overwrite: bool = False,
                 writer: bool = True, defaults: dict | None = None):
        self.path = Path(path)
        self.config = config
        # settings a run of an older version did not store yet had these values (``--resume`` compares with them)
        self.defaults = _normal(defaults or {})
        self.writer = writer
        self.resumed_state: dict | None = None
        self.committed = False  # the folder holds a checkpoint or result of this run: --resume continues it
        self._started_here = False  # this object began a new run (not --resume), so abandon() undoes it
        self._active = False  # holds the lock (or would, on a system without flock)
        self._lock_fd: int | None = None
        self._created: list[Path] = []  # folders made to hold the run, removed again by abandon()
        if not writer:
            if resume:
                self._open_for_resume()
            return
        if resume and not self.path.is_dir():
            raise UserError(f"nothing to resume in {self.path} (no such folder); drop --resume to start a new run")
        self._lock_folder()
        try:
            self._recover(adopt=resume)
            if resume:
                self._open_for_resume()
            elif self.holds_run(self.path) and not overwrite:
                self.refuse(self.path)
            else:
                self._move_aside()
                self._started_here = True  # only now: before, the files in the folder are the old run's
                self._write("config.json", json.dumps(config, indent=2).encode(), fresh_folder=True)
        except OSError as e:  # a rename or removal refused (permissions, a read-only or failing disk)
            self.abandon()
            raise UserError(f"cannot change the run folder {self.path} ({e.strerror or e}); fix its permissions "
                            "or choose another --out") from None
        except BaseException:
            self.abandon()
            raise

    # -- the life of a run ----------------------------------------------------------------------------
    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abandon()
        else:
            self.close()
        return False

    def abandon(self) -> None:
        """End this process's run after an error or interrupt. Before the new run's first checkpoint this
        removes what it wrote and puts the replaced run back (or removes the folder it made), so the folder
        is as it was; after it (or for --resume) the folder is kept for --resume. Then ``close()``."""
        self._close_board()
        if self.writer and self._active and self._started_here and not self.committed:
            try:
                for name in sorted(os.listdir(self.path)):
                    if _belongs_to_run(name):
                        _remove(self.path / name)
                self._put_back()
            except OSError:  # called while another error is raised: the next process to open it finishes this
                pass
        self.close()
        for folder in reversed(self._created):  # deepest first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def close(self) -> None:
        """Release the lock (and remove the lock file). The run's files stay as they are."""
        self._close_board()
        self._active = False
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:  # remove the lock file while still holding it, and only if it is still ours
            if os.path.samestat(os.fstat(fd), os.stat(self.path / LOCK)):
                (self.path / LOCK).unlink()
        except OSError:
            pass
        finally:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- locking and recovery --------------------------------------------------------------------------
    def _lock_folder(self) -> None:
        """Take the folder's lock before anything in it changes; refuse in one line if another process has it."""
        if fcntl is None:
            self._make_folders()
            self._active = True
            return
        lock = self.path / LOCK
        for _ in range(20):
            try:
                self._make_folders()
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # an abandoning run removed the folder between the two calls
                continue
            except OSError as e:
                self.abandon()
                raise UserError(f"cannot write the run folder {self.path} ({e.strerror}); choose another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: held by another process (or by another RunFolder in this one)
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self.abandon()
                raise UserError(f"{self.path} is in use by another oneshot process (PID {holder}); wait for it to end "
                                "or stop it, or choose another --out") from None
            try:  # the previous holder removes the file on close: a lock on a removed file locks nothing
                ours = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                ours = False
            if ours:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock_fd, self._active = fd, True
                return
            os.close(fd)
        raise UserError(f"{self.path} keeps being created and removed by another process; try again")

    def _make_folders(self) -> None:
        missing, folder = [], self.path
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
                self._created.append(folder)
            except FileExistsError:  # made by a process racing us: not ours to remove
                pass

    def _recover(self, adopt: bool) -> None:
        """Finish what a killed process left half done (we hold the lock, so it is dead): a move of old files
        cut short goes back; an old run kept aside goes once the new run has a checkpoint, is kept while
        ``--resume`` continues that same new run (``adopt``), and is put back otherwise."""
        moving, aside = self.path / MOVING, self.path / ASIDE
        if moving.is_dir():
            self._move_all(moving, self.path, crash="restore")
            moving.rmdir()
        if not aside.is_dir():
            return
        if (self.path / "checkpoint.pt").exists() or (self.path / "result.json").exists():
            shutil.rmtree(aside)
            return
        if adopt and self._saved_config() == _normal(self.config):
            return
        for name in sorted(os.listdir(self.path)):
            if _belongs_to_run(name):
                _remove(self.path / name)
        self._put_back()

    def _move_aside(self) -> None:
        """Move the old run's files into ASIDE: first into MOVING, then one rename commits the move, so a kill
        at any moment leaves either the old run in place (MOVING is moved back) or all of it in ASIDE."""
        names = [n for n in sorted(os.listdir(self.path)) if _belongs_to_run(n)]
        if not names:
            return
        moving = self.path / MOVING
        moving.mkdir()
        try:
            for name in names:
                os.replace(self.path / name, moving / name)
                crash_point("overwrite")
            os.replace(moving, self.path / ASIDE)
        except OSError:  # undo at once: every file in MOVING is the old run's
            self._move_all(moving, self.path)
            moving.rmdir()
            raise

    def _put_back(self) -> None:
        """ASIDE back into the folder, whose new-run files are already removed (a rename first, so that a kill
        half-way is finished by ``_recover`` and never mistaken for new files)."""
        aside, moving = self.path / ASIDE, self.path / MOVING
        if not aside.is_dir():
            return
        os.replace(aside, moving)
        self._move_all(moving, self.path, crash="restore")
        moving.rmdir()

    @staticmethod
    def _move_all(source: Path, target: Path, crash: str | None = None) -> None:
        for name in sorted(os.listdir(source)):
            os.replace(source / name, target / name)
            if crash:
                crash_point(crash)

    def _commit(self) -> None:
        """The new run has its first checkpoint (or result): the run it replaced can go."""
        if not self.committed:
            self.committed = True
            if (self.path / ASIDE).is_dir():
                shutil.rmtree(self.path / ASIDE, ignore_errors=True)

    def _saved_config(self):
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None

    def _with_defaults(self, saved):
        """``saved`` settings with the defaults of those added since it was written (a dict; else as it is)."""
        return _filled(saved, self.defaults)

    # -- opening --------------------------------------------------------------------------------------
    @staticmethod
    def holds_run(path) -> bool:
        path = Path(path)
        return any((path / name).exists() for name in RUN_FILES) or (path / ASIDE).is_dir() or (path / MOVING).is_dir()

    @staticmethod
    def refuse(path) -> None:
        raise UserError(f"{path} already holds a run; pass --resume to continue it, --overwrite to "
                        "replace it, or choose another --out")

    def _open_for_resume(self) -> None:
        checkpoint = self.path / "checkpoint.pt"
        if not (self.path / "config.json").exists():
            if self.holds_run(self.path):
                raise UserError(f"nothing to resume in {self.path} (it has no config.json); pass --overwrite to "
                                "replace what is there, or choose another --out")
            raise UserError(f"nothing to resume in {self.path} (no run was started there); drop --resume to "
                            "start a new run")
        saved = self._saved_config()
        if saved is None:
            raise UserError(f"{self.path}/config.json is corrupt; cannot resume, start a new run "
                            "with --overwrite")
        wanted = _normal(self.config)
        saved = self._with_defaults(saved)
        if saved != wanted:
            diff = self._differences(saved, wanted)
            raise UserError(f"--resume with different settings than the run in {self.path} ({diff}); "
                            "use the original settings or start a new run with another --out")
        if self.writer:
            for name in os.listdir(self.path):  # orphans of a kill inside a write
                if name.endswith(".tmp") and _belongs_to_run(name):
                    (self.path / name).unlink(missing_ok=True)
        if not checkpoint.exists():  # killed before its first checkpoint: start again from the beginning
            if self.writer:
                (self.path / "log.jsonl").unlink(missing_ok=True)
            return
        self.resumed_state = self._read_checkpoint(checkpoint, wanted)
        self.committed = True
        # Drop log lines written after the checkpoint (the resumed run writes them again), and a line cut in
        # half by a kill.
        log = self.path / "log.jsonl"
        if log.exists() and self.writer:
            step = self.resumed_state["step"]
            kept = []
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass
            self._write("log.jsonl", "".join(line + "\n" for line in kept).encode())

    @staticmethod
    def _differences(saved: dict, wanted: dict) -> str:
        if not isinstance(saved, dict):
            return "not a settings record"
        return ", ".join(sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)))

    def _read_checkpoint(self, checkpoint: Path, wanted) -> dict:
        fix = "move it away and --resume to restart the run from the beginning, or --overwrite to start again"
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # any unpickling/zip error means the file is unusable
            raise UserError(f"{checkpoint} is corrupt ({_first_line(e)}); {fix}") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise UserError(f"{checkpoint} is not a checkpoint of a search (no 'step'); {fix}")
        saved = state.pop(CONFIG_KEY, None)  # absent in checkpoints of older versions: config.json was checked
        if saved is not None:
            try:
                saved = self._with_defaults(json.loads(saved))
            except (TypeError, ValueError):
                saved = None
            if saved != wanted:
                raise UserError(f"{checkpoint} belongs to a run with other settings "
                                f"({self._differences(saved, wanted)}) than its config.json; {fix}")
        return state

    def restore(self, load_state_dict: Callable[[dict], object]) -> bool:
        """Load the resumed checkpoint into the search (``folder.restore(search.load_state_dict)``), turning a
        state that does not fit into one line; False when there is nothing to resume."""
        if self.resumed_state is None:
            return False
        load_or_refuse(lambda: load_state_dict(self.resumed_state), self.path / "checkpoint.pt")
        return True

    # -- writing --------------------------------------------------------------------------------------
    def _write(self, name: str, data: bytes | Callable, crash: str | None = None, fresh_folder: bool = False) -> None:
        try:
            atomic_write(self.path / name, data, crash=crash)
        except OSError as e:
            if fresh_folder:
                raise UserError(f"cannot write the run folder {self.path} ({e.strerror or e}); choose another --out") from None
            raise self._write_error(name, e) from None

    def _write_error(self, name: str, e: OSError) -> UserError:
        then = ("then --resume continues from the last checkpoint" if self.committed
                else "then run the same command again")
        return UserError(f"cannot write {name} in the run folder {self.path} ({e.strerror or e}); "
                         f"free some space or fix the disk, {then}")

    def log(self, record: dict) -> None:
        if self.writer:
            try:
                with open(self.path / "log.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as e:  # a half-written line is dropped by the next --resume
                raise self._write_error("log.jsonl", e) from None
            if self.config.get("tensorboard"):
                self._tensorboard(record)

    def _close_board(self) -> None:
        board, self._board = getattr(self, "_board", None), None
        if board is not None:
            board.close()

    def _tensorboard(self, record: dict) -> None:
        """The record's numbers as TensorBoard scalars in ``tensorboard/`` (``--tensorboard``)."""
        if getattr(self, "_board", None) is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install 'oneshot-nas[tensorboard]'") \
                    from None
            self._board = SummaryWriter(str(self.path / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self._board.add_scalar(key, value, record["step"])
        self._board.flush()

    def save_checkpoint(self, state: dict) -> None:
        if self.writer:
            stamped = {**state, CONFIG_KEY: json.dumps(self.config, sort_keys=True)}
            self._write("checkpoint.pt", lambda h: torch.save(stamped, h), crash="checkpoint")
            self._commit()

    def write_result(self, result: dict) -> None:
        if self.writer:
            self._write("result.json", json.dumps(result, indent=2).encode())
            self._commit()
            self.plot()

    def records(self) -> list[dict]:
        log = self.path / "log.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []

    def plot(self) -> None:
        """search.png: what the argmax architecture is worth (NB201 table, where it applies), θ's entropy and the
        supernet's losses over the iterations, with the end of warm-up marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        records = self.records()
        if not records:
            return
        config = self.config
        fig, (ax_acc, ax_entropy, ax_loss) = plt.subplots(1, 3, figsize=(14, 3.8))
        fig.suptitle(f"{config.get('strategy', '?')} on {config.get('space', '?')} ({config.get('task', 'cifar10')}), "
                     f"preset {config.get('preset', '?')}, seed {config.get('seed', '?')}")
        timed = next((r for r in records if r.get("epoch")), None)  # steps per epoch = step / epoch
        search_from = (round(config.get("warmup_epochs", 0) * timed["step"] / timed["epoch"])
                       if timed and config.get("warmup_epochs") else None)
        acc = [(r["step"], r["nb201_cifar10"]) for r in records if "nb201_cifar10" in r]
        if acc:
            steps, values = map(np.asarray, zip(*acc))
            ax_acc.plot(steps, values, marker=".", lw=1)
            ax_acc.axhline(94.37, color="grey", ls=":", lw=1, label="NB201 optimum 94.37")
            # the y-range follows the search phase: a warm-up argmax (e.g. the all-skip cell, 54 %) would flatten it
            shown = values[steps > search_from] if search_from is not None and (steps > search_from).any() else values
            low = min(float(shown.min()), 94.37)
            ax_acc.set_ylim(low - 0.1 * (94.5 - low) - 0.1, 94.6)
            ax_acc.legend(fontsize=8, loc="lower right")
            ax_acc.set(ylabel="NB201 CIFAR-10 test acc. (%) of the argmax")
        else:
            ax_acc.text(0.5, 0.5, "no tabular benchmark for this space and task", ha="center", va="center",
                        transform=ax_acc.transAxes)
        ax_acc.set(xlabel="iteration", title="architecture (argmax of θ)")
        entropy = [(r["step"], r["entropy"]) for r in records if "entropy" in r]
        if entropy:
            ax_entropy.plot(*zip(*entropy), lw=1)
        ax_entropy.set(xlabel="iteration", ylabel="mean entropy of θ per decision (nats)", title="θ's certainty")
        ax_entropy.ticklabel_format(axis="y", useOffset=False)
        weight = [(r["step"], r["weight_loss"]) for r in records if "weight_loss" in r]
        if weight:
            ax_loss.plot(*zip(*weight), label="weight step (train)")
        arch = [(r["step"], r["arch_loss"]) for r in records if "arch_loss" in r]
        if arch:
            ax_loss.plot(*zip(*arch), label="arch step")
        ax_loss.set(xlabel="iteration", ylabel="task loss", title="supernet loss")
        ax_loss.legend(fontsize=8)
        if search_from is not None and search_from > records[0]["step"]:
            for ax in (ax_acc, ax_entropy, ax_loss):
                ax.axvline(search_from, color="tab:red", ls="--", lw=0.8)
            ax_loss.text(search_from, ax_loss.get_ylim()[1], " warm-up ends", color="tab:red", fontsize=8, va="top")
        fig.tight_layout()
        try:
            self._write("search.png", lambda h: fig.savefig(h, format="png", dpi=100))
        finally:
            plt.close(fig)


class MemoryFolder:
    """What ``Search.run`` writes, kept in memory: for runs of seconds (the toy experiment, a search inside a
    larger experiment, tests) that need no folder on disk. ``keep_checkpoints`` keeps the last checkpoint,
    serialised as a run folder would, so that a resume can be tested without a disk."""

    def __init__(self, keep_checkpoints: bool = False):
        self.records: list[dict] = []
        self.result: dict | None = None
        self.checkpoint: bytes | None = None
        self.keep_checkpoints = keep_checkpoints

    def log(self, record: dict) -> None:
        self.records.append(record)

    def save_checkpoint(self, state: dict) -> None:
        if self.keep_checkpoints:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self.checkpoint = buffer.getvalue()

    def load_checkpoint(self) -> dict:
        return torch.load(io.BytesIO(self.checkpoint), weights_only=True)

    def write_result(self, result: dict) -> None:
        self.result = result
