"""Your own data from Python: tensors or a ``torch.utils.data.Dataset``, with a loss and a metric.

    task = tasks.from_tensors(train=(x, y), test=(x_test, y_test))            # classification by default
    task = tasks.from_dataset(my_dataset, loss=torch.nn.functional.mse_loss, metric=None)

The training examples are split (fixed shuffle) into a weight half and an architecture half, as for images;
batches are drawn on the device without augmentation.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from .base import Task


class TensorBatches:
    """An endless, reproducible stream of shuffled mini-batches of (x, y) tensors (drop-last epochs)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, seed: int):
        if batch_size < 1 or batch_size > len(x):
            raise UserError(f"batch size {batch_size} does not fit {len(x)} examples: lower the batch size")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos, self.order = 0, 0, None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        if self.order is None:
            self.order = torch.randperm(len(self.x), generator=self.generator).to(self.device)
        index = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        if self.pos + self.batch_size > len(self.x):
            self.epoch, self.pos, self.order = self.epoch + 1, 0, None
        return self.x[index], self.y[index]

    def state_dict(self) -> dict:
        order = torch.empty(0, dtype=torch.int64) if self.order is None else self.order.cpu()
        return {"epoch": self.epoch, "pos": self.pos, "order": order, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.order = state["order"].to(self.device) if state["order"].numel() else None
        self.generator.set_state(state["rng"])


def _as_tensors(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a pair of tensors or from a Dataset of (x, y) pairs, with one-line errors for anything else."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            n = len(data)
        except TypeError:
            raise UserError(f"the {what} Dataset has no len(); give a map-style Dataset of (input, target)") from None
        xs, ys = [], []
        for i in range(n):
            item = data[i]
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise UserError(f"the {what} Dataset must yield (input, target) pairs; item {i} is "
                                f"{type(item).__name__}")
            x, y = item
            if not isinstance(x, torch.Tensor):
                raise UserError(f"the {what} Dataset's inputs must be tensors; item {i} has {type(x).__name__}")
            if not isinstance(y, (torch.Tensor, int, float)):
                raise UserError(f"the {what} Dataset's targets must be tensors or numbers; item {i} has "
                                f"{type(y).__name__}")
            xs.append(x)
            ys.append(torch.as_tensor(y))
        if not xs:
            raise UserError(f"the {what} Dataset is empty")
        try:
            x, y = torch.stack(xs), torch.stack(ys)
        except RuntimeError:
            raise UserError(f"the {what} Dataset's items differ in shape; give every input (and target) one shape") \
                from None
    else:
        raise UserError(f"{what} must be (inputs, targets) tensors or a torch Dataset of (input, target) pairs, "
                        f"got {type(data).__name__}")
    if len(x) != len(y) or len(x) == 0:
        raise UserError(f"{what}: {len(x)} inputs and {len(y)} targets; give as many targets as inputs (at least one)")
    return x, y


class TensorTask(Task):
    def __init__(self, train, test=None, loss: Callable | None = None, metric: str | None = "accuracy",
                 num_outputs: int | None = None, name: str = "tensors", arch_fraction: float = 0.5):
        self.name = name
        self.x, self.y = _as_tensors(train, "train")
        self.test = _as_tensors(test, "test") if test is not None else None
        self.input_shape = tuple(self.x.shape[1:])
        classification = loss is None
        if classification and (self.y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8)):
            raise UserError("classification targets must be integer class indices; pass loss=... for regression")
        self.num_outputs = num_outputs or (int(self.y.max()) + 1 if classification else int(self.y[0].numel()))
        self.loss_fn = loss or torch.nn.functional.cross_entropy
        self.metric = metric or "loss"
        self.higher_is_better = self.metric != "loss"
        if not 0 < arch_fraction < 1:
            raise UserError(f"arch_fraction must lie strictly between 0 and 1, got {arch_fraction}")
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(0))
        n_arch = max(1, int(round(len(self.x) * arch_fraction)))
        self.weight_index, self.arch_index = perm[:len(self.x) - n_arch], perm[len(self.x) - n_arch:]
        if len(self.weight_index) == 0:
            raise UserError("too few training examples to split into weight and architecture halves")

    def search_streams(self, batch_size, device, seed, **_):
        w, a = self.weight_index, self.arch_index
        return (TensorBatches(self.x[w], self.y[w].long() if self.metric == "accuracy" else self.y[w], batch_size,
                              device, seed),
                TensorBatches(self.x[a], self.y[a].long() if self.metric == "accuracy" else self.y[a], batch_size,
                              device, seed + 1))

    def train_stream(self, batch_size, device, seed, **_):
        return TensorBatches(self.x, self.y, batch_size, device, seed)

    def loss(self, forward, batch):
        *inputs, target = batch
        return self.loss_fn(forward(*inputs), target)

    def eval_batches(self, split, batch_size, device, limit=None):
        if split == "arch":
            x, y = self.x[self.arch_index], self.y[self.arch_index]
        elif split == "test" and self.test is not None:
            x, y = self.test
        else:
            raise UserError(f"{self.name}: no {split!r} data; pass test=... to evaluate on a test set")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return ((x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size))

    @torch.no_grad()
    def evaluate(self, forward, split, device, batch_size=256, limit=None):
        if self.metric == "accuracy":
            return super().evaluate(forward, split, device, batch_size, limit)
        total, n = 0.0, 0
        for x, y in self.eval_batches(split, batch_size, device, limit):
            out = forward(x)
            total += float(self.loss_fn(out[0] if isinstance(out, tuple) else out, y)) * len(x)
            n += len(x)
        return {"loss": total / max(1, n)}


def from_tensors(train: tuple, test: tuple | None = None, **options) -> TensorTask:
    return TensorTask(train, test, **options)


def from_dataset(train, test=None, **options) -> TensorTask:
    return TensorTask(train, test, **options)
