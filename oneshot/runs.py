"""A run folder: config.json, log.jsonl, checkpoint.pt, result.json and a plot, written so that no work is lost.

Checkpoints and results are written to a temporary file and renamed, so a kill leaves either the old or the
new file, never half of one. A folder that already holds a run is refused unless the user says ``--resume``
(continue it) or ``--overwrite`` (start again).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from .errors import UserError

RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "result.json", "search.png")
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Fault injection for the kill-and-resume tests: ``ONESHOT_CRASH_AT=name:N`` kills this process with
    SIGKILL the N-th time it passes ``name`` (e.g. ``step:13``, ``checkpoint:2`` = inside the 2nd checkpoint
    write, after the temporary file is written and before it replaces the old checkpoint)."""
    target = os.environ.get("ONESHOT_CRASH_AT")
    if not target or not target.startswith(name + ":"):
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(target.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, write, crash: str | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    if crash:
        crash_point(crash)
    os.replace(tmp, path)


class RunFolder:
    """``writer=False`` (the non-zero ranks of a distributed run) reads a checkpoint to resume but writes nothing."""

    def __init__(self, path: str | os.PathLike, config: dict, resume: bool = False, overwrite: bool = False,
                 writer: bool = True):
        self.path = Path(path)
        self.config = config
        self.writer = writer
        self.resumed_state: dict | None = None
        existing = self.holds_run(self.path)
        if resume:
            self._open_for_resume()
        elif not writer:
            pass
        elif existing and not overwrite:
            self.refuse(self.path)
        else:
            if existing:
                for name in RUN_FILES + tuple(n + ".tmp" for n in RUN_FILES):
                    (self.path / name).unlink(missing_ok=True)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path / "config.json", lambda h: h.write(json.dumps(config, indent=2).encode()))
            except OSError as e:
                raise UserError(f"cannot write the run folder {self.path} ({e.strerror}); choose another --out") from None

    @staticmethod
    def holds_run(path) -> bool:
        return any((Path(path) / name).exists() for name in RUN_FILES)

    @staticmethod
    def refuse(path) -> None:
        raise UserError(f"{path} already holds a run; pass --resume to continue it, --overwrite to "
                        "replace it, or choose another --out")

    def _open_for_resume(self) -> None:
        checkpoint = self.path / "checkpoint.pt"
        if not (self.path / "config.json").exists():
            raise UserError(f"nothing to resume in {self.path} (no config.json); drop --resume to start a new run")
        try:
            saved = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"{self.path}/config.json is corrupt; cannot resume, start a new run "
                            "with --overwrite") from None
        if saved != self.config:
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k))
            raise UserError(f"--resume with different settings than the run in {self.path} ({', '.join(diff)}); "
                            "use the original settings or start a new run with another --out")
        if not checkpoint.exists():  # killed before its first checkpoint: start again from the beginning
            (self.path / "log.jsonl").unlink(missing_ok=True)
            return
        try:
            self.resumed_state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # any unpickling/zip error means the file is unusable
            raise UserError(f"{checkpoint} is corrupt ({type(e).__name__}); delete it and start again "
                            "with --overwrite") from None
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
            atomic_write(log, lambda h: h.write("".join(line + "\n" for line in kept).encode()))

    def log(self, record: dict) -> None:
        if self.writer:
            with open(self.path / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        if self.writer:
            atomic_write(self.path / "checkpoint.pt", lambda h: torch.save(state, h), crash="checkpoint")

    def write_result(self, result: dict) -> None:
        if self.writer:
            atomic_write(self.path / "result.json", lambda h: h.write(json.dumps(result, indent=2).encode()))
            self.plot()

    def records(self) -> list[dict]:
        log = self.path / "log.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        if not records:
            return
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
        steps = [r["step"] for r in records if "nb201_cifar10" in r]
        if steps:
            ax_acc.plot(steps, [r["nb201_cifar10"] for r in records if "nb201_cifar10" in r])
        ax_acc.set(xlabel="iteration", ylabel="NB201 CIFAR-10 test acc. (%) of argmax", title="architecture")
        ax_loss.plot([r["step"] for r in records], [r["weight_loss"] for r in records], label="weight (train)")
        arch = [(r["step"], r["arch_loss"]) for r in records if "arch_loss" in r]
        if arch:
            ax_loss.plot(*zip(*arch), label="arch (val)")
        ax_loss.set(xlabel="iteration", ylabel="cross-entropy", title="supernet loss")
        ax_loss.legend()
        fig.tight_layout()
        fig.savefig(self.path / "search.png", dpi=100)
        plt.close(fig)
