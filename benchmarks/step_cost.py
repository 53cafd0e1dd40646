"""Cost of a supernet training step relative to the networks it stands for (NB201, C=16, N=5, batch 64).

- sparse ratio: one step of the supernet with one-hot gates for a fixed architecture (gates multiplied in
  and dL/dgate computed, as in an AdvantageNAS arch step) / one step of the stand-alone child. Goal <= 1.05.
- weight-step ratio: the same supernet step with the active ops unscaled (no gates: a weight step) / the child.
- dense ratio: one step of the supernet with softmax gates (every op on every edge runs) / the sum over ops of
  the step of the child that uses that op on every edge.
- child / lean child: the library's stand-alone child against the leanest eager implementation of the same
  network (``lean_child.py``: straight-line functional code, no MixedOp), on the same parameters.

Steps of the compared networks are interleaved and the median is taken, so machine noise hits both alike.
``--clock cpu`` times the process's CPU seconds instead of wall seconds: on a machine shared with other jobs
(more runnable threads than cores) the wall time of a step mostly measures the other jobs, its CPU time does
not; use it with ``--threads 1``. ``--batch-sizes 32,64,128,256`` sweeps the batch and writes a plot beside
the JSON, so the growth of each ratio with the batch is visible.

    python benchmarks/step_cost.py --device cpu --repeats 20
    python benchmarks/step_cost.py --device cpu --threads 1 --clock cpu --batch-sizes 32,64,128,256 \\
        --out benchmarks/results/step_cost_sweep_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from oneshot.spaces import create_space
from oneshot.spaces.nb201 import child_from_supernet
from oneshot.trainer import resolve_device

ARCHITECTURE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(step, device, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = now()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return now() - t


def compare(steps: dict, repeats: int, warmup: int, device, clock: str = "wall", samples: dict | None = None) -> dict:
    """Median seconds of each step, timed in turn ``repeats`` times; ``samples`` receives every timing."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, device, clock))
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def network_arguments(doc: str, repeats: int, warmup: int, out: str, parser=None) -> argparse.Namespace:
    """The command line shared by the step-cost benchmarks: device, NB201 supernet size, repeats, output."""
    parser = parser or argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def repeats_at(batch: int, repeats: int) -> int:
    """``repeats`` up to batch 64, fewer above (at least 5): a step of batch 256 is 4x longer and less noisy."""
    return repeats if batch <= 64 else max(5, round(repeats * 64 / batch))


def ratios_at(batch: int, args, device, space, arch, supernet, child) -> dict:
    """Every ratio of the module docstring at one batch size."""
    from lean_child import LeanChild  # benchmarks/ is on sys.path when this script runs

    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)
    one_hot = torch.zeros(6, 4, device=device)
    one_hot[range(6), list(arch)] = 1.0
    active = [[k] for k in arch]
    config = dict(channels=args.channels, cells_per_stage=args.cells)
    load = load_average()

    sparse_steps = {
        "supernet_one_hot_gated": make_step(supernet, x, y, one_hot, active, unit=True),
        "supernet_one_hot_multiplied": make_step(supernet, x, y, one_hot, active),
        "supernet_one_hot_unscaled": make_step(supernet, x, y, None, active),
        "child": make_step(child, x, y),
    }
    if device.type == "cpu" and supernet.config["op_style"] == "advantage":
        sparse_steps["lean_child"] = make_step(LeanChild(child), x, y)
    repeats = repeats_at(batch, args.repeats)
    samples = {}
    sparse = compare(sparse_steps, repeats, args.warmup, device, args.clock, samples)

    per_op = {op: make_step(space.build_child((k,) * 6, **config).to(device), x, y)
              for k, op in enumerate(space.decisions[0].choices)}
    softmax = torch.softmax(torch.randn(6, 4, device=device), -1)
    dense = compare({"supernet_dense": make_step(supernet, x, y, softmax, None), **per_op},
                    max(3, repeats // 3), min(args.warmup, 2), device, args.clock)
    result = {
        "batch": batch, "repeats": repeats, "load_before": load, "load_after": load_average(),
        "seconds": {**sparse, **dense},
        "sparse_ratio_gated": sparse["supernet_one_hot_gated"] / sparse["child"],
        "sparse_ratio_multiplied": sparse["supernet_one_hot_multiplied"] / sparse["child"],
        "sparse_ratio_unscaled": sparse["supernet_one_hot_unscaled"] / sparse["child"],
        "dense_ratio": dense["supernet_dense"] / sum(dense[op] for op in per_op),
    }
    # the fastest of the repeats: interference from other jobs only ever adds time
    result["min_ratios"] = {f"{name}/child": min(t) / min(samples["child"]) for name, t in samples.items()
                            if name != "child"}
    if "lean_child" in sparse:
        result["child_over_lean_child"] = sparse["child"] / sparse["lean_child"]
    return result


def plot(sweep: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["batch"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in [("sparse_ratio_gated", "one-hot arch step / child"),
                       ("sparse_ratio_unscaled", "weight step / child"),
                       ("dense_ratio", "dense step / sum of single-op children"),
                       ("child_over_lean_child", "child / lean child")]:
        if all(key in r for r in sweep):
            ax.plot(batches, [r[key] for r in sweep], marker="o", label=label)
    for bound in (1.05, 1.10):
        ax.axhline(bound, color="grey", lw=0.6, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("step time ratio (median of interleaved repeats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes to sweep, e.g. 32,64,128,256")
    args = network_arguments(__doc__, 30, 5, "benchmarks/results/step_cost.json", parser)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    space = create_space("nb201")
    arch = space.from_string(ARCHITECTURE)
    supernet = space.build_supernet(channels=args.channels, cells_per_stage=args.cells).to(device)
    child = child_from_supernet(space, supernet, arch)
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch]
    sweep = []
    for batch in batches:
        sweep.append(ratios_at(batch, args, device, space, arch, supernet, child))
        print(json.dumps({k: v for k, v in sweep[-1].items() if k != "seconds"}), flush=True)

    header = {
        "machine": machine(), "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "clock": args.clock, "repeats_at_batch_64": args.repeats, "channels": args.channels, "cells_per_stage": args.cells,
        "architecture": ARCHITECTURE,
    }
    result = {**header, **sweep[0]} if len(sweep) == 1 else {**header, "sweep": sweep}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if len(sweep) > 1:
        plot(sweep, out.with_suffix(".png"), f"NB201 C={args.channels} N={args.cells}, {header['device']}, "
                                             f"{torch.get_num_threads()} threads, {args.clock} clock")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
