"""ABS's ranking study on NB201 (spec abs.md §4-5, the paper's Table/Fig. 5-6): how well do supernet metrics
rank children against the NB201 ground truth?

Per seed: train a uniform single-path (SPOS) supernet over the 5-op space (``random`` strategy), then Kendall τ
(``scipy.stats.kendalltau``) against NB201 test accuracy on CIFAR-10, CIFAR-100 and ImageNet16-120 of
- angle: ABS's angle between the child's initial and trained weight vectors (``oneshot.angle``);
- acc w/o ReBN: the child's accuracy on a subset of the held-out split, with the supernet's running BN stats;
- acc w/ ReBN: the same after recomputing the BN statistics of the child on training images;
- magnitude: |V(a)|, the L2 norm of the child's trained block-like weight vector (larger = better).
  The official ``dropnode_by_magnitude.py`` instead ranks by the softmax of DARTS-style α trained jointly with
  the supernet, which a uniform-sampling supernet does not have; the weight norm is our documented stand-in.
- random: random scores (a check that τ is 0 by chance).
All metrics use the same random sample of children (``--archs``, the same for every seed); the angle is also
scored over all 15,625 cells, and after every epoch (Fig. 6).

    python benchmarks/abs_ranking.py --data /work/shared/data/cifar10 --preset cpu --seeds 0 1 2
    python benchmarks/abs_ranking.py --data ... --preset smoke --archs 20 --tag _smoke   # plumbing check
Writes benchmarks/results/abs_ranking{tag}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from oneshot.angle import angles_of, initial_state, magnitudes_of
from oneshot.tabular.nb201 import DATASETS, load_table
from oneshot.cli import parse_assignments
from oneshot.config import preset
from oneshot.data import eval_batches, load_cifar10, split_train
from oneshot.runs import RunFolder
from oneshot.spaces.nb201 import child_from_supernet
from oneshot.trainer import Search, resolve_device

METRICS = ("angle", "acc_without_rebn", "acc_with_rebn", "magnitude", "random")
PAPER = {  # Kendall τ over the space, mean over 10 seeds (spec abs.md §5, from the official .tau files)
    "random": [-0.002, -0.001, 0.003], "acc_without_rebn": [0.041, 0.052, 0.069],
    "acc_with_rebn": [0.540, 0.525, 0.537], "angle": [0.575, 0.604, 0.545],
}


def tau(metric, truth) -> list[float | None]:
    """Kendall τ of a metric against each ground-truth column (None where τ is undefined, e.g. ties only)."""
    out = []
    for j in range(truth.shape[1]):
        t = kendalltau(np.asarray(metric, dtype=np.float64), truth[:, j])[0]
        out.append(None if t is None or math.isnan(t) else round(float(t), 4))
    return out


def accuracy(model, x, y, device) -> float:
    correct = 0
    with torch.no_grad():
        for xb, yb in eval_batches(x, y, 256, device):
            correct += (model(xb).argmax(1) == yb).sum().item()
    return correct / len(y)


def recompute_bn(model, x, device) -> None:
    """Reset every BN's running statistics and re-estimate them as a plain average over the given images."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average, so batch order does not matter
    model.train()
    with torch.no_grad():
        for xb, _ in eval_batches(x, x.new_zeros(len(x)), 256, device):
            model(xb)
    model.eval()


def run_seed(args, seed, data, device, archs, truth_sample, truth_all, all_archs, work) -> dict:
    config = preset(args.preset, space="nb201", space_options={"ops": 5}, strategy="random",
                    strategy_options={"candidates": 1}, seed=seed, **parse_assignments(args.set, "--set"))
    folder = RunFolder(Path(work) / f"seed{seed}", config.to_dict(), overwrite=True)
    search = Search(config, data, device)
    space, theta0 = search.space, initial_state(search.model)
    per_epoch = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):  # train epoch by epoch and score the angle after each
        last = epoch == config.epochs
        search.run(folder, progress=args.progress, stop_after=None if last else epoch * search.steps_per_epoch)
        state = search.model.state_dict()
        per_epoch.append({"epoch": epoch, "angle_sample": tau(angles_of(space, theta0, state, archs), truth_sample),
                          "angle_all": tau(angles_of(space, theta0, state, all_archs), truth_all)})
        print(f"seed {seed} epoch {epoch}: angle τ (sample) {per_epoch[-1]['angle_sample']}", flush=True)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    state = search.model.state_dict()
    (xw, _), (xa, ya) = split_train(data, config.n_weight, config.n_arch)
    xv, yv = xa[:args.val_images], ya[:args.val_images]
    xb = xw[:args.rebn_images]
    scores = {"angle": angles_of(space, theta0, state, archs).tolist(),
              "magnitude": magnitudes_of(space, state, archs).tolist(),
              "random": torch.rand(len(archs), generator=torch.Generator().manual_seed(seed)).tolist(),
              "acc_without_rebn": [], "acc_with_rebn": []}
    for i, arch in enumerate(archs):
        if i % 50 == 0:
            print(f"seed {seed}: accuracies of child {i}/{len(archs)}", flush=True)
        child = child_from_supernet(space, search.model, arch).eval()
        scores["acc_without_rebn"].append(accuracy(child, xv, yv, device))
        recompute_bn(child, xb, device)
        scores["acc_with_rebn"].append(accuracy(child, xv, yv, device))
    return {"seed": seed, "tau": {m: tau(scores[m], truth_sample) for m in METRICS},
            "angle_all_tau": tau(angles_of(space, theta0, state, all_archs), truth_all),
            "per_epoch": per_epoch, "scores": {m: np.round(scores[m], 6).tolist() for m in METRICS},
            "train_seconds": round(train_seconds, 1),
            "metric_seconds": round(time.perf_counter() - started, 1), "config": config.to_dict()}


def summarise(runs) -> dict:
    out = {}
    for m in METRICS + ("angle_all",):
        values = np.array([[np.nan if t is None else t for t in (r["angle_all_tau"] if m == "angle_all" else r["tau"][m])]
                           for r in runs], dtype=np.float64)
        out[m] = {"mean": np.round(np.nanmean(values, 0), 4).tolist(), "std": np.round(np.nanstd(values, 0), 4).tolist()}
    return out


def plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_epoch) = plt.subplots(1, 2, figsize=(11, 3.8))
    summary, width = result["summary"], 0.8 / len(METRICS)
    for i, m in enumerate(METRICS):
        x = np.arange(len(DATASETS)) + (i - (len(METRICS) - 1) / 2) * width
        ax_bar.bar(x, summary[m]["mean"], width, yerr=summary[m]["std"], capsize=2, label=m)
    ax_bar.set_xticks(range(len(DATASETS)), DATASETS)
    ax_bar.set(ylabel="Kendall τ vs NB201", title=f"{result['archs']} children, {len(result['runs'])} seed(s)")
    ax_bar.axhline(0, color="k", lw=0.5)
    ax_bar.legend(fontsize=7, ncol=len(METRICS), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    for r in result["runs"]:
        epochs = [e["epoch"] for e in r["per_epoch"]]
        ax_epoch.plot(epochs, [e["angle_all"][0] for e in r["per_epoch"]], marker=".", label=f"seed {r['seed']}")
    ax_epoch.set(xlabel="supernet epoch", ylabel="Kendall τ (CIFAR-10)", title="angle over all 15,625 cells")
    ax_epoch.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 path (as for 'oneshot search --data')")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a preset setting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--archs", type=int, default=200, help="children in the shared random sample")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=1000, help="held-out images per accuracy")
    parser.add_argument("--rebn-images", type=int, default=1024, help="training images to recompute BN stats")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--work", help="folder for the supernet runs (default: a temporary one)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_cifar10(args.data)
    table = load_table()
    from oneshot.spaces import create_space

    space = create_space("nb201", ops=5)
    all_archs = list(space.enumerate())
    truth_all = table.accuracy[[table.index[space.to_string(a)] for a in all_archs]]
    pick = torch.randperm(len(all_archs), generator=torch.Generator().manual_seed(args.sample_seed))[:args.archs]
    archs = [all_archs[i] for i in pick.tolist()]
    truth_sample = truth_all[pick.numpy()]

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        runs = [run_seed(args, s, data, device, archs, truth_sample, truth_all, all_archs, work) for s in args.seeds]
    result = {"datasets": list(DATASETS), "archs": len(archs), "sample_seed": args.sample_seed,
              "preset": args.preset, "set": args.set or [], "device": str(device),
              "val_images": args.val_images, "rebn_images": args.rebn_images,
              "summary": summarise(runs), "paper": PAPER, "sample": [space.to_string(a) for a in archs],
              "truth_sample": truth_sample.tolist(), "runs": runs}
    out = Path(__file__).parent / "results" / f"abs_ranking{args.tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.parent / (out.name + ".png"))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
