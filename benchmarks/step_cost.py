"""Cost of a supernet training step relative to the networks it stands for (NB201, C=16, N=5, batch 64).

- sparse ratio: one step of the supernet with one-hot gates for a fixed architecture (gates multiplied in
  and dL/dgate computed, as in an AdvantageNAS arch step) / one step of the stand-alone child. Goal <= 1.05.
- dense ratio: one step of the supernet with softmax gates (every op on every edge runs) / the sum over ops of
  the step of the child that uses that op on every edge.

Steps of the compared networks are interleaved and the median is taken, so machine noise hits both alike.

    python benchmarks/step_cost.py --device cpu --repeats 30
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from oneshot.spaces import create_space
from oneshot.spaces.nb201 import child_from_supernet
from oneshot.trainer import resolve_device


def make_step(model, x, y, gates=None, active=None, unit=False):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step():
        g = None if gates is None else gates.detach().clone().requires_grad_()
        loss = F.cross_entropy(model(x, g, active, unit), y) if unit else F.cross_entropy(model(x, g, active), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the trainer reads every loss; the sync belongs in the step

    return step


def timed(step, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def compare(steps: dict, repeats: int, warmup: int, device) -> dict:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    return {name: statistics.median(t) for name, t in times.items()}


def network_arguments(doc: str, repeats: int, warmup: int, out: str) -> argparse.Namespace:
    """The command line shared by the step-cost benchmarks: device, NB201 supernet size, repeats, output."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--out", default=out)
    return parser.parse_args()


def main():
    args = network_arguments(__doc__, 30, 5, "benchmarks/results/step_cost.json")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    space = create_space("nb201")
    arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    config = dict(channels=args.channels, cells_per_stage=args.cells)
    supernet = space.build_supernet(**config).to(device)
    child = child_from_supernet(space, supernet, arch)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(10, (args.batch,), device=device)
    one_hot = torch.zeros(6, 4, device=device)
    one_hot[range(6), list(arch)] = 1.0
    active = [[k] for k in arch]

    sparse = compare({
        "supernet_one_hot_gated": make_step(supernet, x, y, one_hot, active, unit=True),
        "supernet_one_hot_multiplied": make_step(supernet, x, y, one_hot, active),
        "supernet_one_hot_unscaled": make_step(supernet, x, y, None, active),
        "child": make_step(child, x, y),
    }, args.repeats, args.warmup, device)

    per_op = {op: make_step(space.build_child((k,) * 6, **config).to(device), x, y)
              for k, op in enumerate(space.decisions[0].choices)}
    softmax = torch.softmax(torch.randn(6, 4, device=device), -1)
    dense = compare({"supernet_dense": make_step(supernet, x, y, softmax, None), **per_op},
                    max(5, args.repeats // 3), args.warmup, device)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "device": str(device), "channels": args.channels, "cells_per_stage": args.cells, "batch": args.batch,
        "architecture": space.to_string(arch),
        "seconds": {**sparse, **dense},
        "sparse_ratio_gated": sparse["supernet_one_hot_gated"] / sparse["child"],
        "sparse_ratio_unscaled": sparse["supernet_one_hot_unscaled"] / sparse["child"],
        "dense_ratio": dense["supernet_dense"] / sum(dense[op] for op in per_op),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
