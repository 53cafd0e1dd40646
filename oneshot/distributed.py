"""Data-parallel search on torch.distributed (``torchrun``): NCCL on GPUs, gloo on CPUs.

Every rank holds the whole supernet and the same strategy (same seed, hence the same architecture samples).
Each step the global batch is cut into ``world x micro_batches`` equal chunks; a rank runs its own chunks and the
gradients (weights and gates) and losses are summed across ranks before the optimiser step and ``tell``. A one
process run with ``micro_batches = world`` computes the very same numbers, which is how this is tested.
Batch-norm statistics are per chunk ("ghost batch norm") in both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """In-place sum across ranks, as one flat buffer (one collective instead of one per tensor)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

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
