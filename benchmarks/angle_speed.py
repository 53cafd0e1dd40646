"""Time ABS's angle scoring of every cell of the 5-op NB201 space (15,625 children) on the C=16, N=5 supernet.

The fast path (``oneshot.angle.angles_of``: per-(edge, op) dot products, then one gather for all children) is
compared with the explicit per-child vectors (``child_vector``) on a few children, whose time is extrapolated
to the whole space. θ is θ0 plus noise: the timing does not depend on what the weights are.

    python benchmarks/angle_speed.py            # writes benchmarks/results/angle_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from oneshot.angle import angle, angles_of, child_vector, initial_state
from oneshot.spaces import create_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells-per-stage", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-children", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "angle_speed.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    space = create_space("nb201", ops=5)
    model = space.build_supernet(channels=args.channels, cells_per_stage=args.cells_per_stage)
    theta0 = initial_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta = initial_state(model)

    times = []
    for _ in range(args.repeats):  # enumeration included: it is part of scoring the space
        start = time.perf_counter()
        angles = angles_of(space, theta0, theta, list(space.enumerate()))
        times.append(time.perf_counter() - start)

    g = torch.Generator().manual_seed(0)
    picks = [space.sample(g) for _ in range(args.reference_children)]
    start = time.perf_counter()
    reference = [angle(child_vector(space, theta0, a), child_vector(space, theta, a)) for a in picks]
    per_child = (time.perf_counter() - start) / len(picks)
    fast = angles_of(space, theta0, theta, picks)
    error = max(abs(f - r) for f, r in zip(fast.tolist(), reference))

    result = {
        "children": len(angles), "channels": args.channels, "cells_per_stage": args.cells_per_stage,
        "parameters": sum(p.numel() for p in model.parameters()),
        "fast_seconds_median": round(statistics.median(times), 4), "fast_seconds_all": [round(t, 4) for t in times],
        "reference_seconds_per_child": round(per_child, 5),
        "reference_seconds_extrapolated": round(per_child * len(angles), 1),
        "max_abs_difference_vs_reference": error,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
