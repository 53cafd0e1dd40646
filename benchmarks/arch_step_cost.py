"""Cost of one architecture step of each θ-learning strategy, relative to AdvantageNAS's arch step.

NB201 supernet (C=16, N=5 by default), batch 64. Each strategy gets a real ``Search`` whose data streams are
replaced by one fixed batch, so a timed step is exactly the trainer's ``arch_step`` (ask, forward, backward or
no-grad forward as the strategy declares, tell) without the input pipeline. NASP's weight step (argmax op only)
and AdvantageNAS's weight step are timed as well, for reference. Steps are interleaved and the median is taken,
so machine noise hits every strategy alike. PARSEC's median is a buffering call (7 of its 8 calls), which is
also its mean up to one 6x4 Adam step. Single-path costs depend on the ops that run: the sampling strategies'
medians are over random architectures, while NASP's weight step runs its current argmax, whatever ops that is.

    python benchmarks/arch_step_cost.py --device cpu --repeats 5
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
from pathlib import Path

import torch

from oneshot.config import preset
from oneshot.data import Cifar10
from oneshot.trainer import Search, resolve_device
from step_cost import network_arguments, timed  # benchmarks/ is on sys.path when this script runs

STRATEGIES = ["advantage", "advantage_wb", "reinforce", "parsec", "gdas", "proxyless", "nasp", "snas_relaxed", "darts"]
WEIGHT_STEPS = ["nasp", "advantage"]


def make_search(name: str, args, device, data: Cifar10, batch) -> Search:
    config = preset("paper", strategy=name, channels=args.channels, cells_per_stage=args.cells,
                    batch_size=args.batch, n_weight=args.batch, n_arch=args.batch, epochs=2, warmup_epochs=1,
                    augment=False)
    search = Search(config, data, device)
    search.train_stream = search.val_stream = itertools.repeat(batch)
    search.step = search.steps_per_epoch  # in the search phase
    search.search_steps = 10 ** 6          # temperatures stay near their start; the cost does not depend on them
    return search


def main():
    args = network_arguments(__doc__, 20, 3, "benchmarks/results/arch_step_cost.json")
    device = resolve_device(args.device)

    g = torch.Generator().manual_seed(0)
    n = 2 * args.batch
    data = Cifar10(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                   torch.zeros(1, dtype=torch.long), tuple(str(c) for c in range(10)))
    batch = (torch.randn(args.batch, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.batch,), generator=g).to(device))
    searches = {name: make_search(name, args, device, data, batch) for name in STRATEGIES}
    steps = {f"{name}/arch": search.arch_step for name, search in searches.items()}
    steps.update({f"{name}/weight": (lambda s=searches[name]: s.weight_step("weight")) for name in WEIGHT_STEPS})

    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            times[key].append(timed(step, device, args.clock))
    median = {key: statistics.median(t) for key, t in times.items()}
    reference = median["advantage/arch"]

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "channels": args.channels, "cells_per_stage": args.cells, "batch": args.batch, "repeats": args.repeats,
        "median_seconds": median,
        "ratio_to_advantage_arch_step": {key: t / reference for key, t in median.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'step':<22}{'median ms':>11}{'x advantage arch':>18}")
    for key, t in median.items():
        print(f"{key:<22}{1000 * t:>11.1f}{t / reference:>18.2f}")


if __name__ == "__main__":
    main()
