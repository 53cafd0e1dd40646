"""Peak memory of a supernet training step relative to its stand-alone child (NB201, C=16, N=5, batch 64).

Every step kind of ``step_cost.py`` runs in a fresh subprocess of its own, which builds its network and batch,
runs ``--steps`` training steps and reports its peak resident set size (CPU: ``ru_maxrss``) and the resident
size just before the first step; on CUDA, ``torch.cuda.max_memory_allocated`` and the allocation before the first
step. Two ratios per step kind: whole-process peak / the child process's peak, and the step's own memory (peak
minus the resident size before it) / the child's. Goal for the one-hot step: <= 1.05.

    python benchmarks/step_memory.py --device cpu --batch-sizes 32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

KINDS = ["child", "supernet_one_hot_gated", "supernet_one_hot_unscaled", "supernet_dense"]
MB = 2 ** 20


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(kind: str, batch: int, args) -> dict:
    """Build what ``kind`` needs, run its steps, return the memory figures (bytes)."""
    from step_cost import ARCHITECTURE, make_step

    from oneshot.spaces import create_space
    from oneshot.spaces.nb201 import child_from_supernet

    torch.set_num_threads(1)
    device = torch.device(args.device)
    torch.manual_seed(0)
    space = create_space("nb201")
    arch = space.from_string(ARCHITECTURE)
    supernet = space.build_supernet(channels=args.channels, cells_per_stage=args.cells).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)
    one_hot = torch.zeros(6, 4, device=device)
    one_hot[range(6), list(arch)] = 1.0
    active = [[k] for k in arch]
    if kind == "child":
        model = child_from_supernet(space, supernet, arch)
        del supernet  # the child process holds the child only
        step = make_step(model, x, y)
    elif kind == "supernet_one_hot_gated":
        step = make_step(supernet, x, y, one_hot, active, unit=True)
    elif kind == "supernet_one_hot_unscaled":
        step = make_step(supernet, x, y, None, active)
    elif kind == "supernet_dense":
        step = make_step(supernet, x, y, torch.softmax(torch.randn(6, 4, device=device), -1), None)
    else:
        raise ValueError(kind)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"before_step": before, "peak": peak, "step": peak - before}


def measure(kind: str, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--batch", str(batch), "--device", args.device,
           "--channels", str(args.channels), "--cells", str(args.cells), "--steps", str(args.steps)]
    # A fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed, so the
    # peak RSS follows the live tensors instead of glibc's adaptive threshold and heap fragmentation.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["batch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in KINDS[1:]:
        if all(kind in r["step_ratio"] for r in rows):
            axes[0].plot(batches, [r["peak_ratio"][kind] for r in rows], marker="o", label=kind)
            axes[1].plot(batches, [r["step_ratio"][kind] for r in rows], marker="o", label=kind)
    for ax, what in zip(axes, ("whole-process peak / child's", "step memory (peak - before) / child's")):
        ax.axhline(1.05, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(what)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 32,64,128,256")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/step_memory_cpu.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args)))
        return
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch]
    rows = []
    for batch in batches:
        figures = {kind: measure(kind, batch, args) for kind in KINDS}
        child = figures["child"]
        rows.append({
            "batch": batch, "load": round(os.getloadavg()[0], 2),
            "MiB": {kind: {k: round(v / MB, 1) for k, v in f.items()} for kind, f in figures.items()},
            "peak_ratio": {kind: f["peak"] / child["peak"] for kind, f in figures.items() if kind != "child"},
            "step_ratio": {kind: f["step"] / child["step"] for kind, f in figures.items() if kind != "child"},
        })
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", "device": args.device,
        "measure": "peak RSS (ru_maxrss)" if args.device == "cpu" else "torch.cuda.max_memory_allocated",
        "channels": args.channels, "cells_per_stage": args.cells, "steps": args.steps, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if len(rows) > 1:
        plot(rows, out.with_suffix(".png"), f"NB201 C={args.channels} N={args.cells}, {args.device}: peak memory")


if __name__ == "__main__":
    main()
