"""What is being learned: a Task owns the data streams, the loss and the metric.

The search loop (``trainer.Search``) and the from-scratch loop (``retrain.train``) ask a task for batches and a
loss and never name a dataset; spaces build their networks for ``task.input_shape`` and ``task.num_outputs``.

A *batch* is a tuple of tensors whose first entries are the network's inputs and whose last entry is the
target, e.g. ``(x, y)``. The loss is computed by the task from a ``forward`` callable, so a task decides how the
network is called: an image task calls ``forward(x)``; a language model calls ``forward(x, hidden)`` and carries
the hidden state from one window to the next (which is why a task may hold state and be checkpointed).

A *stream* is an endless, reproducible iterator of batches with ``steps_per_epoch``, ``epoch`` (completed
passes) and ``state_dict``/``load_state_dict``; ``data.Batches`` is the image one, ``DrawnStream`` the base of
streams drawn from one seeded generator.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterator, Protocol

import torch

from ..errors import UserError

Batch = tuple  # (*inputs, target)
Forward = Callable[..., torch.Tensor]


class Stream(Protocol):
    steps_per_epoch: int
    epoch: int

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class DrawnStream:
    """An endless stream whose every batch is drawn from one seeded CPU generator (the toy's noise, inpainting's
    images and masks): a subclass says how in ``draw``. Resumable: the state is the generator's and the step count."""

    def __init__(self, seed: int, steps_per_epoch: int, device):
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_epoch, self.device = steps_per_epoch, torch.device(device)
        self.steps = 0

    def draw(self, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        return self.steps // self.steps_per_epoch

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = self.draw(self.generator)
        self.steps += 1
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])
        self.steps = int(state["steps"])


class Task:
    """Base class: override ``search_streams``, ``train_stream``, ``eval_batches`` and, when the loss is not
    cross-entropy on ``forward(x)``, ``loss``."""

    name = "task"
    input_shape: tuple[int, ...] = ()   # one example, e.g. (3, 32, 32); () for token ids
    num_outputs: int = 0                # classes, vocabulary size, or output channels
    metric = "accuracy"                 # the key of ``evaluate``'s main number
    higher_is_better = True
    batch_dim = 0                       # the dimension along which a batch splits into micro-batches
    # Where a tabular benchmark's numbers apply: (space name, benchmark dataset key), e.g. ("nb201", "cifar10").
    benchmark: tuple[str, str] | None = None
    # A line that goes into the run log and result.json, e.g. "PTB train missing: searched on 90 % of valid".
    protocol_note: str | None = None

    # -- data --------------------------------------------------------------------------------------------
    def search_streams(self, batch_size: int, device: torch.device, seed: int, **data) -> tuple[Stream, Stream]:
        """The weight-training stream and the architecture (validation) stream of a search. ``data`` holds the
        search configuration's data settings (``n_weight``, ``n_arch``, ``augment``, ``cutout``); a task uses
        those that apply to it."""
        raise NotImplementedError

    def train_stream(self, batch_size: int, device: torch.device, seed: int, **data) -> Stream:
        """The training data for retraining a child from scratch (``data``: ``n_train``, ``augment``,
        ``cutout``)."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int, device: torch.device,
                     limit: int | None = None) -> Iterator[Batch]:
        """The ``split`` ("arch": search validation, "valid", "test") in order, unaugmented; at most ``limit``
        examples."""
        raise NotImplementedError

    # -- loss and metric -----------------------------------------------------------------------------------
    def loss(self, forward: Forward, batch: Batch) -> torch.Tensor:
        """Mean loss of one batch. ``forward(*inputs)`` runs the network (the caller has bound gates to it)."""
        *inputs, target = batch
        return torch.nn.functional.cross_entropy(forward(*inputs), target)

    def split(self, batch: Batch, n: int) -> list[Batch]:
        """``n`` micro-batches of ``batch`` (for gradient accumulation and data parallelism)."""
        if n == 1:
            return [batch]
        parts = [t.chunk(n, self.batch_dim) for t in batch]
        if any(len(p) != n for p in parts):
            raise UserError(f"a batch of {batch[0].shape[self.batch_dim]} does not split into {n} parts; "
                            "change batch_size or micro_batches")
        return [tuple(p[i] for p in parts) for i in range(n)]

    def batch_size_of(self, batch: Batch) -> int:
        return int(batch[-1].shape[self.batch_dim])

    @torch.no_grad()
    def evaluate(self, forward: Forward, split: str, device: torch.device, batch_size: int = 256,
                 limit: int | None = None) -> dict:
        """``{metric: value}`` over ``split``; the default is classification accuracy (a fraction)."""
        correct = total = 0
        for *inputs, target in self.eval_batches(split, batch_size, device, limit):
            out = forward(*inputs)
            out = out[0] if isinstance(out, tuple) else out
            correct += (out.argmax(-1) == target).sum().item()
            total += target.numel()
        return {"accuracy": correct / max(1, total)}

    # -- state (tasks that carry state across batches, e.g. an RNN's hidden state) -----------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        """What result.json records about the task."""
        out = {"name": self.name, "input_shape": list(self.input_shape), "num_outputs": self.num_outputs,
               "metric": self.metric}
        if self.protocol_note:
            out["protocol_note"] = self.protocol_note
        return out


# --- registry ------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[Callable[..., Task], str]] = {}


def register(name: str, description: str):
    """Decorator for a Task class or factory: ``tasks.create(name, **options)`` builds it."""

    def wrap(factory):
        _REGISTRY[name] = (factory, description)
        return factory

    return wrap


def create(name: str, **options) -> Task:
    from .. import plugins

    plugins.load()
    if name not in _REGISTRY:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(sorted(_REGISTRY))} "
                        "(list them with 'oneshot tasks')")
    factory = _REGISTRY[name][0]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:  # an option the task does not take: say so before any data is read
        raise UserError(f"task {name!r}: bad --task-option ({e}); see its options in 'oneshot tasks'") from None
    except ValueError:  # no signature to check (a builtin): the call decides
        pass
    return factory(**options)


def available() -> dict[str, str]:
    from .. import plugins

    plugins.load()
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}

