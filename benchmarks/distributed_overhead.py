"""Step-time overhead of data-parallel search: N processes (torchrun) versus one, at the same per-rank batch.

Each process gets one thread (and, on CUDA, the NCCL backend), so on CPU the N-process run uses N cores for N
times the global batch; the ratio of iteration times measures what the all-reduces and the shared sampling cost.
Iteration time is taken from the run log (between the first and the last record), so start-up is excluded.

    python benchmarks/distributed_overhead.py --data ../shared/data/cifar10 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def seconds_per_iteration(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def search(out: Path, args, nproc: int, batch: int) -> float:
    settings = ["--set", f"batch_size={batch}", "--set", f"epochs={args.epochs}", "--set", "warmup_epochs=1",
                "--set", "n_weight=4096", "--set", "n_arch=4096", "--set", "channels=16",
                "--set", "cells_per_stage=2", "--set", "log_every=8"]
    cmd = ["oneshot", "search", "--preset", "smoke", "--strategy", "advantage", "--data", args.data,
           "--out", str(out), "--device", args.device, "--quiet", *settings]
    if nproc == 1:
        launcher = [sys.executable, "-m"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(port), "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(launcher + cmd, env=env, check=True)
    return seconds_per_iteration(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--per-rank-batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/distributed_overhead.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = search(Path(tmp) / "one", args, 1, args.per_rank_batch)
        multi = search(Path(tmp) / "many", args, args.nproc, args.per_rank_batch * args.nproc)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "device": args.device, "nproc": args.nproc,
        "per_rank_batch": args.per_rank_batch, "network": "NB201 C=16, 2 cells/stage",
        "seconds_per_iteration": {"1 process": single, f"{args.nproc} processes": multi},
        "overhead_ratio": multi / single,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
