"""The ASNG-NAS toy benchmark (spec asng.md §3, official ``toy/``): how sensitive is each θ optimiser to its step?

D = 30 categorical variables with K = 5 choices each, and weights w ∈ R^{D×K} trained jointly:
f(w, c) = Σ_i Σ_k c_ik (k/K + (w_ik - t_i)²) with t_i ~ N(0, 1/K²) drawn per call and shared by that call's
λ = 2 samples. The noise-free loss Σ c (k/K + w²) is at most 1/K only when every row picks choice 0 and the
chosen weights are near 0. One iteration is the official loop: two samples train w (SGD lr 0.05, momentum 0.9,
cosine over ``cosine_horizon`` = 1e5 iterations as in the official script, whatever the cap), then two fresh
samples on a fresh t rank-update θ. A run is solved at the first iteration whose four noise-free losses have
a minimum ≤ 1/K (the official stopping rule), and is capped at ``max_iter`` (default: the official 1e5).
Because w's noise keeps Σ w_i0² near 0.6 until the cosine has decayed, that rule mostly measures when w gets
lucky; ``arch_iterations`` (an optimal architecture is sampled) measures θ alone and is the robustness plot.

Compared: ASNG (δ_init adapted), SNG (fixed δ) and Adam on the Fisher-normalised ĝ (lr = δ, β 0.9/0.999,
same range restriction), as in the official ``toy/*.py``. All runs of one method step together as one numpy
batch (solved runs leave the batch): the default sweep (3 methods x 9 δ x 10 seeds, 1e5 cap) takes about
2 CPU-minutes. The draws of a run depend on which other runs are still in the batch, so a run is reproduced
by re-running the same sweep, not on its own.

Writes ``asng_toy.json`` (config, iterations per method × δ × seed, medians) and ``asng_toy.png`` (median
iterations to target against δ, log-log, one line per method).

    python experiments/asng_toy.py --out benchmarks/results
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from oneshot.cli import Parser, guarded
from oneshot.errors import UserError
from oneshot.strategies.asng import (Layout, asng_update, natural_gradient, ranking_utility, restrict_categorical,
                                     sample_categorical, sqrt_fisher_categorical)

PROG = "experiments/asng_toy.py"

D, K = 30, 5
METHODS = ("asng", "sng", "adam")
LABELS = {"asng": "ASNG", "sng": "SNG (fixed δ)", "adam": "Adam on ĝ (lr = δ)"}
DELTAS = tuple(10.0 ** e for e in np.arange(-3.0, 1.01, 0.5))  # 1e-3 .. 1e1, 9 values


class AdamOnNG:
    """The official toy's Adam baseline: Adam (β 0.9/0.999, eps 1e-8) on ĝ / ‖ĝ‖_F, then the range restriction.
    Its step counter advances on every update, ties included (as in ``toy/adam.py``)."""

    def __init__(self, theta: np.ndarray, lr: np.ndarray):
        self.lr, self.m, self.v, self.t = lr, np.zeros_like(theta), np.zeros_like(theta), 0

    def update(self, lay: Layout, theta: np.ndarray, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        self.t += 1
        u = ranking_utility(f)
        g = natural_gradient(theta, x, u)
        skip = (u == 0).all(-1)[:, None, None]  # a tie; identical samples still step (ĝ = 0, moments decay)
        g = g / (np.linalg.norm(sqrt_fisher_categorical(theta, g, lay.sizes), axis=-1) + 1e-9)[:, None, None]
        self.m = np.where(skip, self.m, 0.9 * self.m + 0.1 * g)
        self.v = np.where(skip, self.v, 0.999 * self.v + 0.001 * g ** 2)
        step = self.m / (1 - 0.9 ** self.t) / (np.sqrt(self.v / (1 - 0.999 ** self.t)) + 1e-8)
        return np.where(skip, theta, restrict_categorical(theta + self.lr[:, None, None] * step, lay))


def run_method(method: str, deltas: Sequence[float], seeds: Sequence[int], max_iter: int,
               cosine_horizon: int = 100_000, w_lr: float = 0.05, momentum: float = 0.9) -> dict:
    """All runs of one method; arrays (len(deltas), len(seeds)) of

    ``iterations``: the official rule (min noise-free loss of an iteration's 4 evaluations ≤ 1/K);
    ``arch_iterations``: the first iteration one of the 4 sampled architectures is the optimum (all choices 0):
    the same target without the weights' noise, i.e. how fast θ concentrates on the optimum;
    ``final_delta``: the step size δ_init / Δ when the run stopped (δ_init for SNG and Adam).
    A count of max_iter + 1 marks a run that never got there. A run stops once both counts are known.
    """
    lay = Layout.of([K] * D)
    factor = np.arange(K) / K
    rng = np.random.default_rng([METHODS.index(method), *seeds])
    grid = [(d, s) for d in deltas for s in seeds]
    R = len(grid)
    delta = np.array([d for d, _ in grid], dtype=np.float64)
    w = np.stack([np.random.default_rng(s).standard_normal((D, K)) for _, s in grid])  # same w_0 per seed
    buf = np.zeros_like(w)
    theta0, _, _ = lay.initial()
    state = {"theta": np.repeat(theta0[None], R, 0), "m": np.zeros((R, 0)), "v": np.zeros((R, 0)),
             "s": np.zeros((R, lay.n)), "gamma": np.zeros(R), "Delta": np.ones(R)}
    adam = AdamOnNG(state["theta"], delta) if method == "adam" else None
    no_z = np.zeros((R, 2, 0))
    official, arch, final_delta = np.full(R, max_iter + 1), np.full(R, max_iter + 1), delta.copy()
    alive = np.arange(R)
    for t in range(1, max_iter + 1):
        lr = w_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, cosine_horizon) / cosine_horizon))
        theta = state["theta"][:, None]
        # weight step: mean loss of two samples on one noise draw; d/dw of the mean is Σ_samples c (w - t)
        index_w, c = sample_categorical(theta, rng.random((len(alive), 2, D)), lay.sizes)
        noise = rng.standard_normal((len(alive), 1, D, 1)) / K
        clean_w = (c * (factor + w[:, None] ** 2)).sum((-1, -2))
        buf = momentum * buf + (c * (w[:, None] - noise)).sum(1)
        w = w - lr * buf
        # θ step: two fresh samples ranked on one fresh noise draw, with the updated w
        index_t, c = sample_categorical(theta, rng.random((len(alive), 2, D)), lay.sizes)
        noise = rng.standard_normal((len(alive), 1, D, 1)) / K
        f = (c * (factor + (w[:, None] - noise) ** 2)).sum((-1, -2))
        clean_theta = (c * (factor + w[:, None] ** 2)).sum((-1, -2))
        if adam is None:
            new = asng_update(lay, state, c, no_z[: len(alive)], f, delta, adaptive=(method == "asng"),
                              skip_zero=False)  # as the official toy code
            state = {k: new[k] for k in state}
        else:
            state["theta"] = adam.update(lay, state["theta"], c, f)
        hit = np.minimum(clean_w.min(1), clean_theta.min(1)) <= 1.0 / K
        official[alive[hit & (official[alive] > max_iter)]] = t
        optimal = ((index_w == 0).all(-1) | (index_t == 0).all(-1)).any(-1)
        arch[alive[optimal & (arch[alive] > max_iter)]] = t
        done = (official[alive] <= max_iter) & (arch[alive] <= max_iter)
        if done.any() or t == max_iter:
            step = delta / state["Delta"] if method == "asng" else delta
            final_delta[alive] = step
            keep = ~done
            alive, w, buf, delta = alive[keep], w[keep], buf[keep], delta[keep]
            state = {k: v[keep] for k, v in state.items()}
            if adam is not None:
                adam.m, adam.v, adam.lr = adam.m[keep], adam.v[keep], adam.lr[keep]
            if not len(alive):
                break
    shape = (len(deltas), len(seeds))
    return {"iterations": official.reshape(shape), "arch_iterations": arch.reshape(shape),
            "final_delta": final_delta.reshape(shape)}


def fmt_delta(d: float) -> str:
    return f"{d:.3g}"


def median_cell(iters: Sequence[int], max_iter: int) -> str:
    """Median over seeds (unsolved runs count as max_iter + 1) and how many seeds got there."""
    iters = np.asarray(iters)
    med = float(np.median(iters))
    text = f"> {max_iter:,}" if med > max_iter else f"{med:,.0f}"
    return f"{text} ({int((iters <= max_iter).sum())}/{len(iters)})"


def markdown_table(record: dict, metric: str) -> str:
    cfg = record["config"]
    methods = cfg["methods"]
    lines = ["| δ_init (Adam: lr) | " + " | ".join(LABELS[m] for m in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for d in cfg["deltas"]:
        cells = [median_cell(record[metric][m][fmt_delta(d)], cfg["max_iter"]) for m in methods]
        lines.append(f"| {fmt_delta(d)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_asng_toy(deltas: Sequence[float] = DELTAS, seeds: Sequence[int] = tuple(range(10)),
                 methods: Sequence[str] = METHODS, max_iter: int = 100_000, out_dir: str | Path = "runs/asng_toy",
                 cosine_horizon: int = 100_000, progress: bool = True) -> dict:
    """Run the sweep and write asng_toy.json / asng_toy.png under ``out_dir``.

    Returns the JSON record; its ``table`` is Markdown: median iterations per δ (solved seeds in brackets)
    for the architecture target and for the official rule.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise UserError(f"unknown toy method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record = {
        "config": {"D": D, "K": K, "lambda": 2, "w_lr": 0.05, "w_momentum": 0.9, "cosine_horizon": cosine_horizon,
                   "max_iter": max_iter, "target": 1.0 / K, "deltas": [float(d) for d in deltas],
                   "seeds": [int(s) for s in seeds], "methods": list(methods),
                   "iterations": "official rule: min noise-free loss of an iteration's 4 evaluations <= 1/K",
                   "arch_iterations": "one of an iteration's 4 sampled architectures is the optimum (all choices 0)",
                   "unsolved": max_iter + 1},
        "iterations": {}, "arch_iterations": {}, "final_delta": {}, "seconds": {},
    }
    for method in methods:
        t0 = time.perf_counter()
        result = run_method(method, deltas, seeds, max_iter, cosine_horizon)
        record["seconds"][method] = round(time.perf_counter() - t0, 2)
        for key, table in result.items():
            record[key][method] = {fmt_delta(d): row.tolist() for d, row in zip(deltas, table)}
        if progress:
            print(f"{LABELS[method]}: {record['seconds'][method]} s", flush=True)
    record["medians"] = {key: {m: {d: float(np.median(v)) for d, v in rows.items()} for m, rows in record[key].items()}
                         for key in ("arch_iterations", "iterations", "final_delta")}
    record["total_seconds"] = round(time.perf_counter() - start, 2)
    record["table"] = ("Iterations until an optimal architecture is sampled (θ alone):\n\n"
                       + markdown_table(record, "arch_iterations")
                       + "\n\nIterations to the official target (min noise-free loss <= 1/K, weights included):\n\n"
                       + markdown_table(record, "iterations"))
    (out / "asng_toy.json").write_text(json.dumps(record, indent=1))
    plot(record, out / "asng_toy.png")
    return record


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = record["config"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {"arch_iterations": "optimal architecture sampled", "iterations": "official target (loss ≤ 1/K)"}
    for ax, (key, title) in zip(axes, titles.items()):
        for method, rows in record[key].items():
            xs = np.array([float(d) for d in rows])
            runs = np.array(list(rows.values()), dtype=float)
            line, = ax.plot(xs, np.median(runs, 1), "o-", label=LABELS[method])
            ax.fill_between(xs, np.percentile(runs, 25, 1), np.percentile(runs, 75, 1), color=line.get_color(),
                            alpha=0.15, lw=0)
        ax.axhline(cfg["max_iter"], color="grey", ls="--", lw=0.8)
        ax.text(min(cfg["deltas"]), cfg["max_iter"] * 0.93, "cap (not solved)", color="grey", fontsize=8, va="top")
        ax.set(xscale="log", yscale="log", xlabel="δ_init (Adam: learning rate)", title=title)
    axes[0].set_ylabel("iterations (median, 25-75 % band)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ASNG toy: D={cfg['D']}, K={cfg['K']}, {len(cfg['seeds'])} seeds per point", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command line ------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="ASNG-NAS toy: iterations to target vs initial step size, ASNG/SNG/Adam.",
                    epilog=f"example: python {PROG} --out benchmarks/results")
    parser.add_argument("--deltas", type=float, nargs="+", help="initial δ (Adam: learning rate) values "
                                                                "(default: 1e-3 to 10, 9 values)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per method and δ")
    parser.add_argument("--max-iter", type=int, default=100_000)
    parser.add_argument("--out", default="runs/asng_toy", help="folder for asng_toy.json and asng_toy.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def run(args) -> int:
    if args.seeds < 1 or args.max_iter < 1:
        raise UserError(f"--seeds and --max-iter must be at least 1, got {args.seeds} and {args.max_iter}")
    if args.deltas is not None and not all(math.isfinite(d) and d > 0 for d in args.deltas):
        raise UserError(f"--deltas must be positive numbers, got {' '.join(map(str, args.deltas))}")
    record = run_asng_toy(deltas=args.deltas or DELTAS, seeds=tuple(range(args.seeds)), max_iter=args.max_iter,
                          out_dir=args.out, progress=not args.quiet)
    print(record["table"])
    print(f"-> {args.out}/asng_toy.json, {args.out}/asng_toy.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    return guarded(PROG, lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
