"""The AdvantageNAS toy regression as a task (spec advantagenas.md §3): find the teacher architecture.

Trial ``trial`` fixes a network and a random one-hot teacher (``spaces.toy.ToySpace(seed=trial)``, held as
``task.space``: search that space). Inputs are fresh x ~ U[-1,1]^{1x13x13} every step, from generators seeded by
the trial alone (not by the search's seed), so every strategy run on one trial sees the same teacher, the same
batches and the same evaluation batches. The target of x is the teacher architecture's output of the same fixed
network; the loss is the MSE. The metric (``mse``, lower is better) is the MSE of an architecture on the trial's
fixed evaluation batches (``eval_batches`` batches of ``eval_batch_size``); ``eval_loss(arch, i)`` scores an
architecture on batch ``i`` alone, from a table of single-path outputs (a gather, not a forward).

The stream is endless noise, so an epoch is only the trainer's unit for schedules and checkpoints: the toy
protocol has no schedule, and the default epoch (``steps_per_epoch``) is the whole 2,000-step run.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..spaces.toy import INPUT_SIZE, ToySpace
from .base import DrawnStream, Task, register

# Seed offsets of the trial's generators (those of the original toy driver, so its numbers are reproduced).
ARCH_DATA, EVAL_DATA, WEIGHT_DATA = 1_000_003, 2_000_003, 3_000_003


def toy_inputs(generator: torch.Generator, batch_size: int) -> torch.Tensor:
    return torch.rand(batch_size, 1, INPUT_SIZE, INPUT_SIZE, generator=generator) * 2.0 - 1.0


class NoiseStream(DrawnStream):
    """Endless batches (x, teacher(x)) with x drawn from one seeded generator; resumable."""

    def __init__(self, teacher, batch_size: int, seed: int, steps_per_epoch: int, device):
        super().__init__(seed, steps_per_epoch, device)
        self.teacher, self.batch_size = teacher, batch_size

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = toy_inputs(generator, self.batch_size)
        return x.to(self.device), self.teacher(x).to(self.device)


class ToyTask(Task):
    name = "toy"
    metric = "mse"
    higher_is_better = False
    input_shape = (1, INPUT_SIZE, INPUT_SIZE)
    num_outputs = 1

    def __init__(self, trial: int = 0, positions: int = 10, candidates: int = 10, eval_batches: int = 201,
                 eval_batch_size: int = 100, steps_per_epoch: int = 2000):
        for name, value in (("eval_batches", eval_batches), ("eval_batch_size", eval_batch_size),
                            ("steps_per_epoch", steps_per_epoch), ("positions", positions),
                            ("candidates", candidates)):
            if value < 1:
                raise UserError(f"toy: {name} must be at least 1, got {value}")
        self.trial, self.steps_per_epoch = trial, steps_per_epoch
        self.n_eval, self.eval_batch_size = eval_batches, eval_batch_size
        self.space = ToySpace(positions, candidates, seed=trial)
        self.network = self.space.build_supernet()
        self.teacher = self.space.teacher()
        self._table: torch.Tensor | None = None

    def teacher_output(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.network.one_hot_output(x, self.teacher)

    # -- data ------------------------------------------------------------------------------------
    def search_streams(self, batch_size, device, seed, **_):
        """Seeded by the trial, not by ``seed``: every strategy of a trial sees the same batches."""
        return (NoiseStream(self.teacher_output, batch_size, self.trial + WEIGHT_DATA, self.steps_per_epoch, device),
                NoiseStream(self.teacher_output, batch_size, self.trial + ARCH_DATA, self.steps_per_epoch, device))

    def train_stream(self, batch_size, device, seed, **_):
        return NoiseStream(self.teacher_output, batch_size, self.trial + WEIGHT_DATA, self.steps_per_epoch, device)

    def eval_inputs(self) -> Iterator[torch.Tensor]:
        """The trial's fixed evaluation batches, in order (the same for every split)."""
        generator = torch.Generator().manual_seed(self.trial + EVAL_DATA)
        return (toy_inputs(generator, self.eval_batch_size) for _ in range(self.n_eval))

    def eval_batches(self, split, batch_size, device, limit=None):
        """The fixed evaluation batches (``batch_size`` is the task's own ``eval_batch_size``); ``limit``:
        at most that many examples, in whole batches."""
        n = self.n_eval if limit is None else max(1, min(self.n_eval, limit // self.eval_batch_size))
        for _, x in zip(range(n), self.eval_inputs()):
            yield x.to(device), self.teacher_output(x).to(device)

    # -- loss and metric -------------------------------------------------------------------------
    def loss(self, forward, batch):
        x, target = batch
        return F.mse_loss(forward(x), target)

    @torch.no_grad()
    def evaluate(self, forward, split, device, batch_size=256, limit=None):
        """``{"mse": ...}``: the mean over the evaluation batches (all of one size) of each batch's MSE."""
        losses = [float(F.mse_loss(forward(x), y)) for x, y in self.eval_batches(split, batch_size, device, limit)]
        return {"mse": sum(losses) / len(losses)}

    def eval_loss(self, arch: Sequence[int], index: int) -> float:
        """MSE of a one-hot ``arch`` on evaluation batch ``index`` alone, from the table of single-path outputs."""
        if self._table is None:
            # (batches, B, positions, candidates): a one-hot architecture's output is the mean over positions
            # of one entry per position, so scoring any architecture is a gather.
            self._table = torch.stack([self.network.single_path_outputs(x) for x in self.eval_inputs()])
            self._targets = self._gather(self.teacher)
        positions = torch.arange(len(arch))
        y = self._table[index, :, positions, torch.as_tensor(arch)].mean(-1)
        return float(F.mse_loss(y, self._targets[index]))

    def _gather(self, arch: Sequence[int]) -> torch.Tensor:
        positions = torch.arange(len(arch))
        return self._table[:, :, positions, torch.as_tensor(arch)].mean(-1)

    def describe(self) -> dict:
        return {**super().describe(), "trial": self.trial, "teacher": list(self.teacher)}


@register("toy", "AdvantageNAS toy regression: recover a random teacher architecture of a fixed network "
                 "(options: trial=N; search task.space, the toy space of that trial)")
def toy(data: str | None = None, **options) -> ToyTask:
    if data is not None:
        raise UserError("the toy task makes its own data; drop --data")
    try:
        return ToyTask(**options)
    except TypeError as e:
        raise UserError(f"toy: bad --task-option ({e}); options: trial, positions, candidates, eval_batches, "
                        "eval_batch_size, steps_per_epoch") from None
