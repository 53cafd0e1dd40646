"""Share of a search iteration spent in the batch pipeline (NB201 on CIFAR-10, CPU). Goal: <= 3 %.

A real ``Search`` of the given preset runs ``--iterations`` iterations of its search phase (an AdvantageNAS arch
step on a validation batch, then a weight step on a training batch, as ``Search.run`` does). Its two streams
are wrapped so that every ``next()`` (index the stored uint8 images, random crop and flip, normalise) is timed;
the share is the pipeline's seconds over the iterations' seconds. The window starts at an epoch boundary, so
it includes the epoch's plan (permutation, crop offsets, flips), which later steps of that epoch reuse: the
share over a whole epoch is lower. CPU seconds with one thread (``--clock cpu``) are what a machine shared
with other jobs can measure; wall seconds are recorded beside them.

    python benchmarks/data_share.py --data ../shared/data/cifar10 --preset cpu
    python benchmarks/data_share.py --data ../shared/data/cifar10 --preset paper --iterations 40
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from oneshot.api import as_task_of
from oneshot.config import preset
from oneshot.trainer import Search


class TimedStream:
    """``stream`` with the seconds spent in its ``next()`` added up (CPU and wall)."""

    def __init__(self, stream):
        self.stream = stream
        self.cpu = self.wall = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        cpu, wall = time.process_time(), time.perf_counter()
        batch = next(self.stream)
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        return batch


def measure(args) -> dict:
    config = preset(args.preset, data=args.data, device="cpu", strategy="advantage")
    search = Search(config, as_task_of(config, None), torch.device("cpu"))
    search.step = config.warmup_epochs * search.steps_per_epoch  # the search phase: arch and weight steps
    search.train_stream, search.val_stream = TimedStream(search.train_stream), TimedStream(search.val_stream)

    def iteration():
        search.arch_step()
        search.weight_step("weight")
        search.step += 1

    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.iterations):
        iteration()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    streams = (search.train_stream, search.val_stream)
    data_cpu, data_wall = sum(s.cpu for s in streams), sum(s.wall for s in streams)
    return {
        "preset": args.preset, "channels": config.channels, "cells_per_stage": config.cells_per_stage,
        "batch_size": config.batch_size, "iterations": args.iterations,
        "steps_per_epoch": search.steps_per_epoch,
        "seconds_per_iteration": {"cpu": cpu / args.iterations, "wall": wall / args.iterations},
        "pipeline_seconds_per_iteration": {"cpu": data_cpu / args.iterations, "wall": data_wall / args.iterations},
        "share": {"cpu": data_cpu / cpu, "wall": data_wall / wall},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/data_share_<preset>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = measure(args)
    result.update(machine=f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}", load_before=round(load, 2),
                  load_after=round(os.getloadavg()[0], 2))
    out = Path(args.out or f"benchmarks/results/data_share_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
