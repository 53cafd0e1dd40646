"""A table and a figure from finished run folders: ``report(["runs/a-s0", "runs/a-s1", ...], out="report/")``.

Runs are grouped by their whole configuration except the seed (and where the data lives and which device ran
it), so a 2-epoch smoke run never pools with a 20-epoch run; two runs of one group with the same seed are refused.
A row is labelled with the strategy, its hyper-parameters and space options, and every other setting in which
its group differs from the others (``advantage [epochs=20]``). Accuracies are NB201 CIFAR-10 test accuracies (``cifar10``: ori-test, 200 epochs, seed mean) of the
final argmax architecture ("AM") and of the best sampled one ("PB"); ± is the sample standard deviation (n-1)
over seeds, left out when a method has a single seed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError

CURVE_POINTS = 200


def load_run(path: str | Path) -> dict:
    """``{"path", "config", "result", "records"}`` of one finished run folder."""
    path = Path(path)
    if not (path / "result.json").exists():
        hint = ("it has not finished; continue it with 'oneshot search --resume --out {0}'"
                if (path / "checkpoint.pt").exists() else "is it a run folder?")
        raise UserError(f"{path} has no result.json; {hint.format(path)}")

    def read(name: str, lines: bool = False):
        file = path / name
        try:
            text = file.read_text()
            return [json.loads(line) for line in text.splitlines() if line] if lines else json.loads(text)
        except ValueError as e:  # --resume rewrites result.json and drops broken log lines; not config.json
            fix = ("rerun that search with --overwrite" if name == "config.json" else
                   f"'oneshot search --resume --out {path}' writes it again from the run's checkpoint")
            raise UserError(f"{file} is corrupt ({e}); {fix}") from None

    result = read("result.json")
    config = read("config.json") if (path / "config.json").exists() else {}
    records = read("log.jsonl", lines=True) if (path / "log.jsonl").exists() else []
    return {"path": str(path), "config": config, "result": result, "records": records}


NOT_A_METHOD = ("seed", "data", "device")  # settings that do not make a run a different experiment


def group_key(run: dict) -> str:
    config = {k: v for k, v in run["config"].items() if k not in NOT_A_METHOD}
    return json.dumps({"strategy": run["result"].get("strategy"), **config}, sort_keys=True)


def method_label(run: dict) -> str:
    options = {**run["config"].get("space_options", {}), **run["config"].get("strategy_options", {})}
    name = run["result"].get("strategy") or run["config"].get("strategy", "?")
    if not options:
        return name
    return f"{name} ({', '.join(f'{k}={json.dumps(v)}' for k, v in sorted(options.items()))})"


def mean_std(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": v.tolist()}


def fmt(stat: dict | None, digits: int = 2) -> str:
    if stat is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std']:.{digits}f}"


def curve(run: dict, x: str = "seconds") -> tuple[np.ndarray, np.ndarray]:
    """(seconds or iterations, NB201 accuracy) of the logged argmax architectures. Records carry ``seconds`` when
    the trainer logs it; otherwise time is assumed proportional to the step (the run's search_seconds at its end)."""
    records = [r for r in run["records"] if "nb201_cifar10" in r]
    if x == "iterations":
        return (np.asarray([r["step"] for r in records], dtype=float),
                np.asarray([r["nb201_cifar10"] for r in records], dtype=float))
    result = run["result"]
    scale = result.get("search_seconds", 0.0) / max(1, result.get("iterations") or records[-1]["step"]) \
        if records else 0.0
    t = [r["seconds"] if "seconds" in r else r["step"] * scale for r in records]
    return np.asarray(t, dtype=float), np.asarray([r["nb201_cifar10"] for r in records], dtype=float)


def median_curve(runs: list[dict], x: str = "seconds") -> dict | None:
    """Median over seeds on a common grid; each run holds its last logged value (a step function)."""
    curves = [c for c in (curve(r, x) for r in runs) if len(c[0])]
    if not curves:
        return None
    grid = np.linspace(0.0, max(t[-1] for t, _ in curves), CURVE_POINTS)
    rows = []
    for t, acc in curves:
        index = np.searchsorted(t, grid, side="right") - 1
        rows.append(np.where(index >= 0, acc[np.maximum(index, 0)], np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before the first log
        median = np.nanmedian(np.asarray(rows), axis=0)
    return {"x": grid.tolist(), ("seconds" if x == "seconds" else "iterations"): grid.tolist(),
            "median_cifar10": [None if np.isnan(v) else float(v) for v in median]}


def accuracy_at(run: dict, budget: float) -> float | None:
    """NB201 accuracy of the last argmax architecture logged within ``budget`` seconds of search: what a
    method would have returned had it been stopped when the reference method finished (the paper cuts the
    dense methods at equal wall-clock time)."""
    t, acc = curve(run)
    within = np.flatnonzero(t <= budget)
    return float(acc[within[-1]]) if len(within) else None


def summarise(runs: list[dict], budgets: dict | None = None, x: str = "seconds") -> dict:
    """``budgets``: seed -> seconds of the reference method's run with that seed (equal-time accuracy)."""
    results = [r["result"] for r in runs]
    timed = [accuracy_at(r, budgets[r["result"].get("seed")]) for r in runs
             if budgets and r["result"].get("seed") in budgets]
    am = [r["nb201"]["cifar10"] for r in results if r.get("nb201", {}).get("cifar10") is not None]
    pb = [r["best_sampled"]["nb201"]["cifar10"] for r in results
          if (r.get("best_sampled") or {}).get("nb201", {}).get("cifar10") is not None]
    ranks = [r["nb201"]["cifar10_rank"] for r in results if r.get("nb201", {}).get("cifar10_rank") is not None]
    return {
        "runs": [r["path"] for r in runs], "seeds": [r["result"].get("seed") for r in runs],
        "am_cifar10": mean_std(am), "pb_cifar10": mean_std(pb),
        "am_cifar10_equal_time": mean_std([a for a in timed if a is not None]),
        "mean_rank": float(np.mean(ranks)) if ranks else None,
        "search_seconds": float(np.mean([r.get("search_seconds", np.nan) for r in results])),
        "cpu_seconds": float(np.mean([r.get("cpu_seconds", np.nan) for r in results])),
        "curve": median_curve(runs, x), "curve_x": x,
    }


def seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(methods: dict[str, dict], reference: str | None = None) -> str:
    timed = f" AM at {reference}'s time (%) |" if reference else ""
    lines = ["| method | seeds | AM CIFAR-10 test acc. (%) | PB CIFAR-10 test acc. (%) |" + timed +
             " mean AM rank | search time (s) | CPU (s) |", "|---|---|---|---|" + ("---|" if reference else "") +
             "---|---|---|"]
    for label, m in methods.items():
        rank = "–" if m["mean_rank"] is None else f"{m['mean_rank']:.0f}"
        cell = f" {fmt(m['am_cifar10_equal_time'])} |" if reference else ""
        lines.append(f"| {label} | {len(m['runs'])} | {fmt(m['am_cifar10'])} | {fmt(m['pb_cifar10'])} |{cell} "
                     f"{rank} | {seconds(m['search_seconds'])} | {seconds(m['cpu_seconds'])} |")
    return "\n".join(lines) + "\n"


def plot_curves(methods: dict[str, dict], path: str | Path, x: str = "seconds") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, m in methods.items():
        if m["curve"]:
            y = np.array([np.nan if v is None else v for v in m["curve"]["median_cifar10"]])
            ax.plot(m["curve"]["x"], y, label=f"{label} (n={len(m['runs'])})", lw=1.2)
    ax.set(xlabel="search wall-clock time (s)" if x == "seconds" else "iteration",
           ylabel="NB201 CIFAR-10 test acc. (%), argmax",
           title="median over seeds")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EXPLANATION = """
AM: NB201 CIFAR-10 test accuracy (200-epoch training, mean over the table's seeds) of the architecture the search
returned (argmax of θ; random search: best of its sampled children on validation data). PB: the same for the
best architecture the strategy sampled during the search (lowest loss on one validation batch). ± is the sample
standard deviation over seeds. Mean AM rank: rank of the AM cell among the 15,625 cells (1 = best). The
equal-time column cuts each run at the reference method's search time of the same seed. Search time is wall-clock
seconds of the search loop, CPU its process time.
"""


def report(run_dirs: Sequence[str], out: str | None = None, reference: str | None = "advantage",
           x: str = "seconds") -> str:
    """The Markdown table of the runs in ``run_dirs``; with ``out``, also writes report.md, report.json and
    curves.png there. ``reference``: the method whose search time (per seed) sets the equal-time column."""
    if not run_dirs:
        raise UserError("no run folders given; pass the folders that 'oneshot search' wrote")
    by_config: dict[str, list[dict]] = {}
    for path in run_dirs:
        run = load_run(path)
        by_config.setdefault(group_key(run), []).append(run)
    for runs in by_config.values():
        seen: dict = {}
        for run in runs:
            seed = run["result"].get("seed")
            if seed in seen:
                raise UserError(f"{seen[seed]} and {run['path']} are the same experiment with the same seed {seed}; "
                                "pass each run once")
            seen[seed] = run["path"]
    # settings (other than the strategy and its options, which the label shows) in which groups differ
    configs = [runs[0]["config"] for runs in by_config.values()]
    shown = ("strategy", "strategy_options", "space_options", *NOT_A_METHOD)
    varying = sorted({k for c in configs for k in c if k not in shown and any(o.get(k) != c.get(k) for o in configs)})
    groups: dict[str, list[dict]] = {}
    for runs in by_config.values():
        label = method_label(runs[0])
        extra = [f"{k}={json.dumps(runs[0]['config'].get(k))}" for k in varying]
        groups[label + (f" [{', '.join(extra)}]" if extra else "")] = runs
    if reference not in groups:
        reference = None
    budgets = {r["result"].get("seed"): r["result"]["search_seconds"] for r in groups[reference]} if reference else None
    if x not in ("seconds", "iterations"):
        raise UserError(f"curves are plotted against seconds or iterations, not {x!r}")
    methods = {label: summarise(runs, budgets, x) for label, runs in groups.items()}
    text = table(methods, reference)
    if out is not None:
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write the report folder {folder} ({e.strerror}); choose another one") from None
        (folder / "report.md").write_text(text + EXPLANATION)
        (folder / "report.json").write_text(json.dumps(methods, indent=1))
        plot_curves(methods, folder / "curves.png", x)
    return text
