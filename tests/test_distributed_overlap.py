"""Gradients summed across two gloo processes while backward runs (``oneshot.distributed.OverlappedGradients``)
equal the sum of both ranks' gradients computed by hand; only the step's last backward hands gradients over."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from oneshot.distributed import Group, OverlappedGradients


class TwoBranches(nn.Module):
    """``branch`` picks which of two heads runs: a population of two samples uses different parameters."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(5, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])

    def forward(self, x, branch):
        return self.heads[branch](torch.tanh(self.trunk(x)))


def loss_of(model, rank, sample, chunk):
    """A loss that differs per rank, sample and micro-batch, so a missing or doubled term shows."""
    g = torch.Generator().manual_seed(100 * rank + 10 * sample + chunk)
    x = torch.randn(4, 5, generator=g)
    return (model(x, sample) ** 2).mean() * (1 + rank)


def step(model, rank, reducer=None) -> list[int]:
    """Two samples (branches) x two micro-batches, the backward calls the trainer makes; returns the number of
    collectives in flight after each backward."""
    model.zero_grad(set_to_none=True)
    in_flight = []
    for sample in (0, 1):
        for chunk in (0, 1):
            loss = loss_of(model, rank, sample, chunk)
            if reducer is None:
                loss.backward()
            else:
                reducer.backward(loss, last=(sample, chunk) == (1, 1))
                in_flight.append(len(reducer.in_flight))
    return in_flight


def worker(rank, world, store_path, results):
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TwoBranches()
        # expected: each rank's gradients computed locally, summed by hand over both ranks' losses
        expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        for r in range(world):
            step(model, r)
            for name, p in model.named_parameters():
                expected[name] += p.grad
        reducer = OverlappedGradients(model, bucket_bytes=64)  # tiny buckets: several collectives per step
        in_flight = step(model, rank, reducer)
        reducer.finish()
        summed = {name: p.grad.clone() for name, p in model.named_parameters()}
        results[rank] = {"in_flight": in_flight, "left_in_flight": len(reducer.in_flight),
                         "max_error": max(float((summed[k] - expected[k]).abs().max()) for k in expected),
                         "scale": max(float(v.abs().max()) for v in expected.values())}
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    results = mp.Manager().dict()
    store = str(tmp_path_factory.mktemp("store") / "file")
    mp.spawn(worker, args=(2, store, results), nprocs=2, join=True)
    return dict(results)


def test_overlapped_sum_equals_the_hand_made_sum_of_both_ranks(two_ranks):
    for rank in (0, 1):
        r = two_ranks[rank]
        assert r["scale"] > 1e-3
        assert r["max_error"] < 1e-6 * r["scale"], r


def test_only_the_last_backward_starts_collectives_and_finish_waits_for_them(two_ranks):
    for rank in (0, 1):
        in_flight = two_ranks[rank]["in_flight"]
        assert in_flight[:3] == [0, 0, 0]  # earlier backward calls only accumulate
        # the last backward (head 1 and the trunk: 4 tensors in 64-byte buckets) launched buckets while it ran
        assert in_flight[3] >= 2
        assert two_ranks[rank]["left_in_flight"] == 0


def test_a_single_process_group_runs_plain_backward():
    model = TwoBranches()
    group = Group()
    group.backward(loss_of(model, 0, 0, 0), model, last=True)
    group.sum_gradients_(model)
    assert model.trunk.weight.grad is not None and not group._reducers
