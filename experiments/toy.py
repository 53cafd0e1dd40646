"""The AdvantageNAS toy experiment (spec advantagenas.md §3): how fast does each estimator find a teacher?

A driver over ``trainer.Search``: trial ``t`` is the toy task ``tasks.toy.ToyTask(trial=t)`` (fixed convs, a
random one-hot teacher, fresh U[-1,1] batches and fixed evaluation batches, all seeded by the trial), and each
method is one search run on it: architecture steps only (the network has no weights), θ trained by Adam(lr 1e-3,
β 0.9/0.999), no weight decay, no clipping, one 2,000-step epoch (so no learning-rate schedule). The run logs its
argmax architecture every ``eval_every`` steps; that architecture's MSE on the trial's evaluation batch
``step / eval_every`` is the curve. All methods of a trial see the same teacher, the same training batches and
the same evaluation batches.

Writes ``toy.json`` (config, curves, summary) and ``toy.png`` (median loss x 100 with a 25-75 % band).

    python experiments/toy.py --trials 10 --out results/toy
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from oneshot import strategies
from oneshot.cli import Parser, guarded
from oneshot.config import SearchConfig
from oneshot.errors import UserError
from oneshot.runs import MemoryFolder
from oneshot.spaces.toy import ToySpace
from oneshot.tasks.toy import ToyTask
from oneshot.trainer import Search

PROG = "experiments/toy.py"

ALL_METHODS = ("advantage", "reinforce", "parsec", "gdas", "proxyless", "snas_relaxed", "darts", "nasp")
LABELS = {"advantage": "AdvantageNAS", "advantage_wb": "AdvantageNAS/w-b", "reinforce": "REINFORCE",
          "parsec": "PARSEC", "gdas": "GDAS", "proxyless": "ProxylessNAS", "snas_relaxed": "SNAS",
          "darts": "DARTS", "nasp": "NASP"}
# The toy protocol's θ optimiser (official toy.py sets Adam alpha 1e-3, beta1 0.9, no hooks).
OPTIMIZER = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=float("inf"))
# "Solved": loss x 100 below this. The argmax loss is exactly 0 only at the teacher's architecture; a uniformly
# random architecture scores about 2 (loss x 100), one wrong position out of ten about 0.1 or more, so 0.01
# means "essentially the teacher" (at most one position wrong, and only on a near-duplicate channel).
THRESHOLD_X100 = 0.01


def toy_task(trial_seed: int, iterations: int, eval_every: int = 10, batch_size: int = 100) -> ToyTask:
    """The task of one trial, with one evaluation batch per curve point (step 0 included)."""
    return ToyTask(trial=trial_seed, eval_batches=iterations // eval_every + 1, eval_batch_size=batch_size,
                   steps_per_epoch=iterations)


def toy_config(method: str, seed: int, iterations: int, eval_every: int = 10, batch_size: int = 100,
               **changes) -> SearchConfig:
    """The search settings of one method on one trial: the toy protocol as a ``SearchConfig``."""
    lr = OPTIMIZER["lr"]
    theta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in OPTIMIZER.items() if k != "lr"}
    settings = dict(
        task="toy", task_options={"trial": seed, "eval_batches": iterations // eval_every + 1,
                                  "eval_batch_size": batch_size, "steps_per_epoch": iterations},
        space="toy", space_options={"seed": seed}, strategy=method, strategy_options=theta, a_lr=lr, seed=seed,
        batch_size=batch_size, epochs=1, warmup_epochs=0, augment=False, device="cpu", log_every=eval_every,
        checkpoint_every=iterations, preset="toy")
    return SearchConfig().replace(**{**settings, **changes}).validated()


def run_method(task: ToyTask, method: str, iterations: int, eval_every: int = 10, seed: int = 0,
               batch_size: int = 100) -> dict:
    """One method on one trial through ``trainer.Search``; returns its curve of argmax loss (step 0 and every
    ``eval_every`` steps, each on its own evaluation batch), its final architecture and the positions right."""
    config = toy_config(method, seed, iterations, eval_every, batch_size)
    search = Search(config, task, torch.device("cpu"), space=task.space)
    folder = MemoryFolder()
    curve = [task.eval_loss(search.strategy.derive(), 0)]
    search.run(folder, progress=False)
    for i, record in enumerate(folder.records, start=1):
        if record["step"] != i * eval_every:
            raise RuntimeError(f"toy: expected a log record at step {i * eval_every}, got {record['step']}")
        curve.append(task.eval_loss(task.space.from_string(record["architecture"]), i))
    final = task.space.from_string(folder.result["architecture"])
    return {"curve": curve, "architecture": list(final),
            "positions_correct": sum(a == b for a, b in zip(final, task.teacher))}


def first_below(curve: Sequence[float], threshold: float, eval_every: int) -> float:
    """Iterations until the curve first drops below ``threshold`` (inf if it never does)."""
    below = np.flatnonzero(np.asarray(curve) < threshold)
    return float(below[0] * eval_every) if len(below) else float("inf")


def resolve_methods(methods: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Explicit methods are all required (``create`` names the unknown one); by default, the registered
    subset of the eight methods of the paper's figure, and the list of those missing."""
    if methods is not None:
        return list(methods), []
    known = strategies.available()
    return [m for m in ALL_METHODS if m in known], [m for m in ALL_METHODS if m not in known]


def run_toy(trials: int = 10, iterations: int = 2000, methods: Sequence[str] | None = None,
            out_dir: str | None = None, seed: int = 0, progress: bool = True, eval_every: int = 10,
            batch_size: int = 100) -> dict:
    """Run the toy experiment; returns (and, with ``out_dir``, writes to toy.json and toy.png) the results.

    ``methods``: strategy names; None runs every registered one of ``ALL_METHODS``. Trial ``t`` uses the seed
    ``1000 * seed + t`` for its convs, teacher and batches, and for every strategy's sampler.
    """
    from tqdm.auto import tqdm

    methods, missing = resolve_methods(methods)
    if missing:
        print(f"toy: strategies not available yet, skipped: {', '.join(missing)}", file=sys.stderr)
    if iterations % eval_every:
        raise UserError(f"toy: iterations ({iterations}) must be a multiple of eval_every ({eval_every})")
    space = ToySpace()
    for m in methods:  # fail on a bad name before any work
        strategies.create(m, space, **OPTIMIZER)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few thousand numbers: threads only add overhead
    curves = {m: [] for m in methods}
    details = {m: [] for m in methods}
    seconds = {m: 0.0 for m in methods}
    teachers = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(total=trials * len(methods), disable=not progress, desc="toy", unit="run", dynamic_ncols=True)
    try:
        for trial in range(trials):
            task = toy_task(seed * 1000 + trial, iterations, eval_every, batch_size)
            teachers.append(list(task.teacher))
            for m in methods:
                t0 = time.perf_counter()
                out = run_method(task, m, iterations, eval_every, seed * 1000 + trial, batch_size)
                seconds[m] += time.perf_counter() - t0
                curves[m].append([round(v * 100, 6) for v in out["curve"]])
                details[m].append({"architecture": out["architecture"], "positions_correct": out["positions_correct"]})
                bar.update()
                bar.set_postfix(trial=trial, method=m, final=f"{out['curve'][-1] * 100:.3g}")
    finally:
        bar.close()
        torch.set_num_threads(threads)
    summary = {}
    for m in methods:
        c = np.asarray(curves[m])
        reach = [first_below(row, THRESHOLD_X100, eval_every) for row in c]
        med = float(np.median(reach))
        summary[m] = {
            "label": LABELS.get(m, m),
            "median_iterations_to_threshold": med if np.isfinite(med) else None,
            "trials_reaching_threshold": int(np.isfinite(reach).sum()),
            "trials_below_threshold_at_end": int((c[:, -1] < THRESHOLD_X100).sum()),
            "final_median_x100": float(np.median(c[:, -1])),
            "median_x100_at_600": float(np.median(c[:, 600 // eval_every])) if iterations >= 600 else None,
            "mean_positions_correct": float(np.mean([d["positions_correct"] for d in details[m]])),
            "seconds": round(seconds[m], 2),
        }
    result = {
        "config": {"trials": trials, "iterations": iterations, "methods": methods, "missing": missing,
                   "seed": seed, "eval_every": eval_every, "batch_size": batch_size,
                   "optimizer": {**OPTIMIZER, "grad_clip": None}, "threshold_x100": THRESHOLD_X100,
                   "units": "MSE x 100 of the argmax architecture on a fresh batch",
                   "search": "trainer.Search, architecture steps only (settings: experiments/toy.py toy_config)"},
        "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "iterations_axis": list(range(0, iterations + 1, eval_every)),
        "teachers": teachers, "summary": summary, "curves_x100": curves, "final": details,
    }
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "toy.json").write_text(json.dumps(result, indent=1))
        plot_toy(result, path / "toy.png")
    return result


def plot_toy(result: dict, path: str | Path, xmax: int = 600) -> None:
    """Left: median loss x 100 over trials with a 25-75 % band, iterations 0-600, as in the paper's toy figure.
    Right: the fraction of trials whose argmax architecture is (essentially) the teacher, over the whole run;
    a log axis would not show it, since the loss there is exactly 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(result["iterations_axis"])
    threshold = result["config"]["threshold_x100"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keep = x <= xmax
    for m, rows in result["curves_x100"].items():
        c = np.asarray(rows)
        lo, mid, hi = np.percentile(c[:, keep], [25, 50, 75], axis=0)
        line, = left.plot(x[keep], mid, label=result["summary"][m]["label"], lw=1.2)
        left.fill_between(x[keep], lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        right.plot(x, (c < threshold).mean(0), color=line.get_color(), lw=1.2)
    left.set(xlabel="iteration", ylabel="loss x 100 (argmax architecture)", xlim=(0, xmax), ylim=(0, None),
             title=f"median and 25-75 % over {result['config']['trials']} trials")
    right.set(xlabel="iteration", ylabel=f"fraction of trials with loss x 100 < {threshold:g}", xlim=(0, x[-1]),
              ylim=(0, 1.02), title="teacher found")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=8, fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command line ------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="The AdvantageNAS toy task: 8 estimators recover a teacher architecture.",
                    epilog=f"example: python {PROG} --trials 10 --out results/toy")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", help="strategies to compare (default: the paper's eight)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/toy", help="folder for toy.json and toy.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args) -> int:
    if args.trials < 1 or args.iterations < 1:
        raise UserError(f"--trials and --iterations must be at least 1, got {args.trials} and {args.iterations}")
    if not 0 <= args.seed < 2**32 // 1000:  # trial t seeds its generators with 1000 * seed + t
        raise UserError(f"--seed must lie between 0 and {2**32 // 1000 - 1}, got {args.seed}")
    result = run_toy(trials=args.trials, iterations=args.iterations, methods=args.methods, out_dir=args.out,
                     seed=args.seed, progress=not args.quiet)
    print(f"{'method':<18} {'median iters to teacher':>24} {'trials found':>13} {'final loss x100':>16}")
    for summary in result["summary"].values():
        iters = summary["median_iterations_to_threshold"]
        print(f"{summary['label']:<18} {'never' if iters is None else f'{iters:.0f}':>24} "
              f"{summary['trials_reaching_threshold']:>10}/{args.trials:<2} {summary['final_median_x100']:>16.3f}")
    print(f"-> {args.out}/toy.json, {args.out}/toy.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    return guarded(PROG, lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
