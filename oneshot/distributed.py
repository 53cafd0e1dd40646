"""Data-parallel search on torch.distributed (``torchrun``): NCCL on GPUs, gloo on CPUs.

Every rank holds the whole supernet and the same strategy (same seed, hence the same architecture samples).
Each step the global batch is cut into ``world x micro_batches`` equal chunks; a rank runs its own chunks and the
gradients (weights and gates) and losses are summed across ranks before the optimiser step and ``tell``. A one
process run with ``micro_batches = world`` computes the very same numbers, which is how this is tested.
Batch-norm statistics are per chunk ("ghost batch norm") in both cases.

Weight gradients are summed while backward still runs (``OverlappedGradients``): a hook on every parameter hands
its gradient over as soon as autograd has finished accumulating it, full buckets are all-reduced asynchronously,
and the optimiser step waits for them. Every rank builds the same graph for the same sampled architecture, so
the hooks fire in the same order everywhere and the buckets (and the order of the collectives) agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

# A bucket is launched once it holds this many bytes (``ONESHOT_BUCKET_MB`` overrides): small enough that the
# first buckets leave while most of backward is still to run, large enough that a small supernet's step needs
# only a few collectives, each with its fixed cost (NB201 C=16: 1-3 MB of gradients).
BUCKET_BYTES = int(float(os.environ.get("ONESHOT_BUCKET_MB", "1")) * 2 ** 20)


def _sum_flat(tensors: list[torch.Tensor], async_op: bool = False):
    """All-reduce ``tensors`` as one flat buffer; returns (work or None, flat)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return dist.all_reduce(flat, async_op=async_op), flat


def _scatter_flat(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


class OverlappedGradients:
    """Sums ``model``'s parameter gradients across ranks, overlapping the collectives with backward.

    ``backward(objective, last)`` runs one backward; only when ``last`` is true (the step's final backward, after
    every micro-batch and sample has accumulated its share) do the hooks hand gradients over. ``finish()`` then
    reduces the gradients no hook saw on that last backward (parameters that only an earlier sample of a
    population used), waits for every collective and writes the sums back into ``p.grad``.
    """

    def __init__(self, model: torch.nn.Module, bucket_bytes: int = BUCKET_BYTES):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.bucket_bytes = bucket_bytes
        self.armed = False
        self.bucket: list[torch.Tensor] = []
        self.filled = 0
        self.seen: set[int] = set()   # id() of the parameters handed over in this step
        self.in_flight: list[tuple] = []  # (work, flat buffer, gradients it holds)
        self.hooks = [p.register_post_accumulate_grad_hook(self._ready) for p in self.params]

    def _ready(self, param: torch.Tensor) -> None:
        if self.armed:
            self._add(param)

    def _add(self, param: torch.Tensor) -> None:
        grad = param.grad
        if self.bucket and (grad.dtype != self.bucket[0].dtype or grad.device != self.bucket[0].device):
            self._launch()  # a bucket is one flat buffer: one dtype, one device
        self.seen.add(id(param))
        self.bucket.append(grad)
        self.filled += grad.numel() * grad.element_size()
        if self.filled >= self.bucket_bytes:
            self._launch()

    def _launch(self) -> None:
        work, flat = _sum_flat(self.bucket, async_op=True)
        self.in_flight.append((work, flat, self.bucket))
        self.bucket, self.filled = [], 0

    def backward(self, objective: torch.Tensor, last: bool) -> None:
        self.armed = last
        try:
            objective.backward()
        finally:
            self.armed = False

    def finish(self) -> None:
        for param in self.params:  # parameter order: the same on every rank
            if param.grad is not None and id(param) not in self.seen:
                self._add(param)
        if self.bucket:
            self._launch()
        for work, flat, grads in self.in_flight:
            work.wait()
            _scatter_flat(flat, grads)
        self.in_flight, self.seen = [], set()

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    # one OverlappedGradients per model (by id), made at the model's first distributed backward
    _reducers: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """In-place sum across ranks, as one flat buffer (one collective instead of one per tensor)."""
        if self.world == 1 or not tensors:
            return
        _, flat = _sum_flat(tensors)
        _scatter_flat(flat, tensors)

    def backward(self, objective: torch.Tensor, model: torch.nn.Module, last: bool = True) -> None:
        """``objective.backward()``; across ranks, the step's ``last`` backward also starts summing ``model``'s
        gradients as they become ready. Call ``sum_gradients_(model)`` before reading them."""
        if self.world == 1:
            objective.backward()
            return
        self._reducer(model).backward(objective, last)

    def sum_gradients_(self, model: torch.nn.Module) -> None:
        """Wait for the sums that ``backward`` started and sum the gradients it did not see: afterwards every
        ``p.grad`` of ``model`` holds the sum over ranks."""
        if self.world > 1:
            self._reducer(model).finish()

    def _reducer(self, model: torch.nn.Module) -> OverlappedGradients:
        reducer = self._reducers.get(id(model))
        if reducer is None:
            reducer = self._reducers[id(model)] = OverlappedGradients(model)
        return reducer

    def agree(self, failed: bool) -> bool:
        """True on every rank if any rank failed: lets all ranks stop together instead of hanging."""
        if self.world == 1:
            return failed
        flag = torch.tensor([1.0 if failed else 0.0], device=_collective_device())
        dist.all_reduce(flag)
        return bool(flag.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_environment(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (a single process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size()), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
