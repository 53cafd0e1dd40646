"""The table of a folder of searches, each retrained from scratch: one row per search folder holding a
``result.json`` (and a ``retrain-PRESET.json`` beside it), written as ``table.json``, ``table.md`` and
``table.png`` into the folder. Used by experiments/darts_cpu.sh and experiments/ptb_cpu.sh.

    python experiments/retrain_table.py results/darts-cpu [--preset cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def row(run: Path, preset: str) -> dict | None:
    search_file, retrain_file = run / "result.json", run / f"retrain-{preset}.json"
    if not search_file.is_file():
        return None
    search = json.loads(search_file.read_text())
    config = json.loads((run / "config.json").read_text())
    out = {"run": run.name, "strategy": config["strategy"], "seed": config["seed"],
           "hyperparameters": config.get("hyperparameters") or {}, "architecture": search["architecture"],
           "derivation": search.get("derivation", "argmax"), "search_seconds": search["search_seconds"],
           "search_device": search.get("device")}
    if "without_retraining" in search:
        out["without_retraining"] = search["without_retraining"]
    if retrain_file.is_file():
        retrain = json.loads(retrain_file.read_text())
        metric = "perplexity" if "test_perplexity" in retrain else "accuracy"
        out.update(metric=metric, parameters=retrain["parameters"], flops=retrain.get("flops"),
                   retrain_seconds=retrain["train_seconds"], retrain_epochs=retrain["epochs"],
                   **{k: retrain[k] for k in (f"valid_{metric}", f"test_{metric}") if k in retrain})
    return out


def fmt(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def markdown(rows: list[dict]) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = r["strategy"] + "".join(f" {k}={v}" for k, v in sorted(r["hyperparameters"].items()))
        groups.setdefault(label, []).append(r)
    lines = ["| strategy | seeds | derived architecture (first seed) | search min | supernet / child without "
             "retraining | retrained valid | retrained test | params |", "|---|---|---|---|---|---|---|---|"]
    for label, rs in groups.items():
        metric = rs[0].get("metric", "accuracy")
        scale, digits = (1, 2) if metric == "perplexity" else (100, 2)
        wr = [r["without_retraining"] for r in rs if "without_retraining" in r]
        without = (f"{fmt([100 * w['supernet'] for w in wr], 2)} / {fmt([100 * w['child'] for w in wr], 2)}"
                   if wr else "–")
        lines.append(
            f"| {label} | {len(rs)} | `{rs[0]['architecture']}` ({rs[0]['derivation']}) | "
            f"{fmt([r['search_seconds'] / 60 for r in rs], 1)} | {without} | "
            f"{fmt([scale * r[f'valid_{metric}'] for r in rs if f'valid_{metric}' in r], digits)} | "
            f"{fmt([scale * r[f'test_{metric}'] for r in rs if f'test_{metric}' in r], digits)} | "
            f"{fmt([r['parameters'] / 1e6 for r in rs if 'parameters' in r], 3)} M |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "metric" in r]
    if not done:
        return
    metric = done[0]["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [r["run"] for r in done]
    ax.bar(names, [r[f"test_{metric}"] for r in done], color="tab:blue")
    ax.set_ylabel(f"retrained test {metric}")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    folder = Path(args.folder)
    rows = [r for run in sorted(p for p in folder.iterdir() if p.is_dir()) if (r := row(run, args.preset))]
    (folder / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    (folder / "table.md").write_text(markdown(rows))
    plot(rows, folder / "table.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
