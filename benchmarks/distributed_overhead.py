"""Step-time overhead of data-parallel search: N processes (torchrun) versus one, at the same per-rank batch.

Each process gets one thread (and, on CUDA, the NCCL backend), so on CPU the N-process run uses N cores for N
times the global batch; the ratio of iteration times measures what the all-reduces and the shared sampling cost.
Iteration time is taken from the run log (between the first and the last record), so start-up is excluded.
The runs are interleaved (1 process, N processes, N processes of ``--compare-src``, again ...) and the median of
each kind is taken, so a machine shared with other jobs slows every kind alike; the load average before each
run is recorded beside it.

N processes on N cores also slow each other where no byte is exchanged (shared caches, memory bandwidth, a VM's
cores that are one physical core's threads): the kind "N independent processes side by side" runs N unrelated
1-process searches at once, and ``overhead_vs_side_by_side`` divides the N-process time by theirs, which leaves
what communication and synchronisation cost.

``--compare-src DIR`` also times a second copy of the library (say ``git archive HEAD oneshot | tar -x -C DIR``,
the code before a change) under the same conditions: the before/after of one run.

    python benchmarks/distributed_overhead.py --data ../shared/data/cifar10 --nproc 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seconds_per_iteration(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def load_average() -> float:
    return os.getloadavg()[0]


def search(out: Path, args, nproc: int, batch: int, source: Path, copies: int = 1) -> tuple[float, float]:
    """One search run with the library in ``source`` (``python -m oneshot`` from there imports that copy); with
    ``copies`` > 1, that many independent runs at once (their mean): the cores' contention without communication."""
    settings = ["--set", f"batch_size={batch}", "--set", f"epochs={args.epochs}", "--set", "warmup_epochs=1",
                "--set", f"n_weight={args.images}", "--set", f"n_arch={args.images}", "--set", "channels=16",
                "--set", "cells_per_stage=2", "--set", "log_every=8"]
    cmd = ["oneshot", "search", "--preset", "smoke", "--strategy", "advantage", "--data", str(Path(args.data).resolve()),
           "--out", str(out), "--device", args.device, "--quiet", *settings]
    if nproc == 1:
        launcher = [sys.executable, "-m"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(port), "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(source)}
    if copies == 1:
        subprocess.run(launcher + cmd, env=env, check=True, cwd=source)
        return seconds_per_iteration(out), cpu_seconds_per_iteration(out)
    outs = [out.with_name(f"{out.name}-copy{i}") for i in range(copies)]
    jobs = [subprocess.Popen(launcher + [str(o) if c == str(out) else c for c in cmd], env=env, cwd=source)
            for o in outs]
    if any(job.wait() for job in jobs):
        raise SystemExit("a side-by-side run failed")
    return (statistics.mean(seconds_per_iteration(o) for o in outs),
            statistics.mean(cpu_seconds_per_iteration(o) for o in outs))


def cpu_seconds_per_iteration(run_dir: Path) -> float:
    """Rank 0's CPU seconds of the whole search per iteration (warm-up included): the work, not the waiting."""
    result = json.loads((run_dir / "result.json").read_text())
    return result["cpu_seconds"] / result["iterations"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--per-rank-batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4096, help="n_weight = n_arch (per epoch)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compare-src", default=None, help="another copy of the library to time the same way")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/distributed_overhead.json")
    args = parser.parse_args()
    # (processes of one run, source, independent runs at once)
    kinds = {"1 process": (1, REPO, 1), f"{args.nproc} processes": (args.nproc, REPO, 1),
             f"{args.nproc} independent processes side by side": (1, REPO, args.nproc)}
    if args.compare_src:
        kinds[f"{args.nproc} processes, {args.compare_src}"] = (args.nproc, Path(args.compare_src).resolve(), 1)
    runs = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (kind, (nproc, source, copies)) in enumerate(kinds.items()):
                load = load_average()
                seconds, cpu = search(Path(tmp) / f"{repeat}-{index}", args, nproc, args.per_rank_batch * nproc,
                                      source, copies)
                runs[kind].append({"seconds_per_iteration": seconds, "cpu_seconds_per_iteration": cpu,
                                   "load_before": load})
                print(f"{kind}: {seconds:.3f} s/it, {cpu:.3f} CPU s/it (load {load:.2f})", flush=True)
    median = {kind: statistics.median(r["seconds_per_iteration"] for r in rs) for kind, rs in runs.items()}
    cpu_median = {kind: statistics.median(r["cpu_seconds_per_iteration"] for r in rs) for kind, rs in runs.items()}
    single = median["1 process"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "device": args.device, "nproc": args.nproc,
        "per_rank_batch": args.per_rank_batch, "network": "NB201 C=16, 2 cells/stage",
        "epochs": args.epochs, "images": args.images, "repeats": args.repeats,
        "seconds_per_iteration": median,
        "overhead_ratio": {kind: t / single for kind, t in median.items() if kind != "1 process"},
        "cpu_seconds_per_iteration": cpu_median,
        "cpu_ratio": {kind: t / cpu_median["1 process"] for kind, t in cpu_median.items() if kind != "1 process"},
        # communication alone: the N-process run against N independent runs sharing the cores the same way
        "overhead_vs_side_by_side": median[f"{args.nproc} processes"]
        / median[f"{args.nproc} independent processes side by side"],
        # ratios within one repeat (the runs of a repeat follow each other, so they share the machine's load)
        "overhead_ratio_per_repeat": {kind: [r["seconds_per_iteration"] / s["seconds_per_iteration"]
                                             for r, s in zip(rs, runs["1 process"])]
                                      for kind, rs in runs.items() if kind != "1 process"},
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds_per_iteration", "overhead_ratio", "overhead_vs_side_by_side",
                                             "cpu_ratio")}, indent=2))


if __name__ == "__main__":
    main()
