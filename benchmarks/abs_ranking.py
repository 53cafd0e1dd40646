"""ABS's ranking study on NB201 (spec abs.md §4-5; the paper's τ table and Fig. 6), on ABS's own supernet.

Per seed, the supernet is trained the way ABS's NB201 code trains it (preset ``abs`` / ``abs-cpu``: NB201's
network with ``lastact``, the 5 ops, op BN without affine, per-cell uniform sampling ``abs_uniform``, SGD
Nesterov 0.025 cosine to 0.001 with T_max 250, wd 5e-4, no clipping, 25k + 25k images), one epoch at a time
through the engine (``trainer.Search``, resumed from its own checkpoint). After EVERY epoch, Kendall τ
(``scipy.stats.kendalltau``, τ-b) against NB201 test accuracy on CIFAR-10, CIFAR-100 and ImageNet16-120 of:

- ``angle_init``: ABS's angle with θ0 = the random initialisation (what the shrinking run uses);
- ``angle_epoch0``: θ0 = the weights after the first epoch, as the official τ table does (its θ0 is the
  ``seed-{s}_epoch-0.pth`` checkpoint, saved after training epoch 0); undefined after that first epoch;
- ``magnitude``: |V(a)|, the norm of the child's trained block-like vector (our stand-in: the official
  ``dropnode_by_magnitude.py`` ranks DARTS-style α, which a uniform supernet does not have);
- ``random``: random scores (τ should be 0 by chance);
each over all 15,625 cells ("all") and over a fixed random sample of ``--archs`` cells ("sample"), and, on the
sample only (they need forward passes):
- ``acc_without_rebn``: the child's accuracy on held-out images (the arch half) with the supernet's running
  BN statistics;
- ``acc_with_rebn``: the same after re-estimating every BN's statistics on ``--rebn-images`` training images.

Our epoch k (k epochs trained) is the official checkpoint ``epoch-{k-1}``; Fig. 6's "epoch 2" is our epoch 3.

``--old-zero-grad`` trains as the official code's torch (< 2.0) did: ``zero_grad`` zeroes gradients instead of
dropping them, so every op sampled once gets weight decay and momentum steps at every later step too, sampled or
not. Our engine drops them (an unsampled op does not move), which changes the early τ a lot (README).

Resumable: everything lives in ``--work`` (default ``runs/abs_ranking{tag}``): per seed the engine's run folder
(``run/``), the weights after every epoch (``weights/after-{k}.pt``, k = 0 the initialisation) and the scores
so far (``epochs.json``, accuracies saved every few children); the same command continues where it stopped.

    python benchmarks/abs_ranking.py --data ../shared/data/cifar10 --preset abs-cpu --tag _abs_cpu --threads 1
    python benchmarks/abs_ranking.py --data ... --preset abs --until-epoch 10 --seeds 0 1 2 --device cuda --tag _abs_gpu
    python benchmarks/abs_ranking.py --data ... --preset abs --until-epoch 6 --old-zero-grad --tag _abs_oldzerograd
    python benchmarks/abs_ranking.py --data ... --preset abs-cpu --set n_weight=256 n_arch=256 epochs=2 \\
        --archs 8 --val-images 64 --rebn-images 64 --tag _smoke      # plumbing check, about a minute
Writes benchmarks/results/abs_ranking{tag}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from oneshot import tasks
from oneshot.angle import PATHS, angles_of, initial_state, magnitudes_of
from oneshot.cli import parse_assignments
from oneshot.config import preset
from oneshot.data import eval_batches, split_train
from oneshot.runs import RunFolder
from oneshot.spaces import create_space
from oneshot.spaces.nb201 import child_from_supernet
from oneshot.tabular.nb201 import DATASETS, load_table
from oneshot.trainer import Search, network_options, resolve_device

ALL_METRICS = ("angle_init", "angle_epoch0", "magnitude", "random")    # cheap: scored on all 15,625 cells
SAMPLE_METRICS = ALL_METRICS + ("acc_without_rebn", "acc_with_rebn")  # on the sample
PAPER = {  # Kendall τ over the space, mean ± std over 10 seeds, angle at epoch 249 with θ0 = epoch 0 (spec §5)
    "angle_epoch0": {"mean": [0.575, 0.604, 0.545], "std": [0.002, 0.002, 0.002]},
    "acc_with_rebn": {"mean": [0.540, 0.525, 0.537], "std": [0.052, 0.043, 0.023]},
    "acc_without_rebn": {"mean": [0.041, 0.052, 0.069], "std": [0.037, 0.021, 0.018]},
    "random": {"mean": [-0.002, -0.001, 0.003], "std": [None, None, None]},
}
# Fig. 6, CIFAR-10, hard-coded in the official visualize.py: τ per seed (5 rows) at official epochs 2, 4, .., 10.
FIG6_EPOCHS = [2, 4, 6, 8, 10]
FIG6_CIFAR10 = {
    "angle": [[0.57, 0.59, 0.58, 0.60, 0.59], [0.54, 0.57, 0.57, 0.54, 0.53], [0.56, 0.57, 0.59, 0.56, 0.55],
              [0.55, 0.57, 0.58, 0.53, 0.52], [0.57, 0.60, 0.58, 0.56, 0.54]],
    "acc_with_rebn": [[-0.18, 0.01, 0.05, 0.15, 0.24], [0.02, 0.12, 0.33, 0.41, 0.46],
                      [0.21, 0.20, 0.20, 0.24, 0.27], [0.13, 0.16, 0.21, 0.22, 0.24],
                      [0.06, 0.15, 0.29, 0.31, 0.33]],
}


# --- pure pieces ---------------------------------------------------------------------------------------
def tau(metric, truth) -> list[float | None]:
    """Kendall τ-b of a metric against each ground-truth column (None where undefined, e.g. a constant metric)."""
    values = np.asarray(metric, dtype=np.float64)
    out = []
    for j in range(truth.shape[1]):
        t = kendalltau(values, truth[:, j])[0] if np.ptp(values) > 0 else math.nan
        out.append(None if t is None or math.isnan(t) else round(float(t), 4))
    return out


def conv_weights(space, archs, live_only: bool) -> np.ndarray:
    """A training-free reference: the conv weights of each cell in units of C² (1x1: 1, 3x3: 9), i.e. its parameter
    count up to a constant; ``live_only`` counts only convs on a path that no 'none' cuts (those the angle sees)."""
    size = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}
    out = []
    for arch in archs:
        names = space.op_names(arch)
        edges = range(len(names))
        if live_only:
            edges = {e for path in PATHS if all(names[i] != "none" for i in path) for e in path}
        out.append(sum(size.get(names[e], 0) for e in edges))
    return np.asarray(out, dtype=np.float64)


def cheap_scores(space, weights: dict, epoch: int, archs, seed: int) -> dict[str, list[float] | None]:
    """The metrics that need no forward pass, for ``archs``; ``weights[k]`` = the state after k epochs."""
    state = weights[epoch]
    g = torch.Generator().manual_seed(1000 * seed + epoch)
    return {"angle_init": angles_of(space, weights[0], state, archs).tolist(),
            # after the first epoch θ0 = θ: every angle is 0 (rounding noise), so there is nothing to rank
            "angle_epoch0": angles_of(space, weights[1], state, archs).tolist() if epoch >= 2 else None,
            "magnitude": magnitudes_of(space, state, archs).tolist(),
            "random": torch.rand(len(archs), generator=g).tolist()}


def accuracy(model, x, y, device, batch: int = 256) -> float:
    correct = 0
    with torch.no_grad():
        for xb, yb in eval_batches(x, y, batch, device):
            correct += (model(xb).argmax(1) == yb).sum().item()
    return correct / len(y)


def recompute_bn(model, x, device, batch: int = 256) -> None:
    """Reset every BN's running statistics and re-estimate them as a plain average over the given images
    (the official ``recalculate_bn`` resets to 0/1 and keeps momentum 0.1 over 20k images in batches of 512)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average, so batch order does not matter
    model.train()
    with torch.no_grad():
        for xb, _ in eval_batches(x, x.new_zeros(len(x)), batch, device):
            model(xb)
    model.eval()


def child_accuracies(space, supernet, arch, val, rebn_x, device) -> tuple[float, float]:
    """(accuracy with the supernet's BN statistics, accuracy after ReBN) of one child on ``val``."""
    child = child_from_supernet(space, supernet, arch).eval()
    without = accuracy(child, *val, device)
    recompute_bn(child, rebn_x, device)
    return without, accuracy(child, *val, device)


# --- files ---------------------------------------------------------------------------------------------
def save_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_json(path: Path, data) -> None:
    save_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def load_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


# --- one seed ------------------------------------------------------------------------------------------
class SeedRun:
    """The supernet of one seed, trained epoch by epoch into ``work``, with every epoch's weights kept."""

    def __init__(self, args, config, task, device, work: Path):
        self.args, self.config, self.task, self.device, self.work = args, config, task, device, work
        self.weights_dir = work / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        run_dir = work / "run"
        resume = (run_dir / "config.json").exists()
        self.folder = RunFolder(run_dir, config.to_dict(), resume=resume, overwrite=not resume)
        self.search = Search(config, task, device)
        if args.old_zero_grad:  # torch < 2.0's zero_grad, as the official code ran: see --old-zero-grad
            zero_grad = self.search.optimizer.zero_grad
            self.search.optimizer.zero_grad = lambda set_to_none=True: zero_grad(set_to_none=False)
        self.folder.restore(self.search.load_state_dict)
        first = self.weights_dir / "after-0.pt"
        if not first.exists():
            if self.search.step:
                raise SystemExit(f"{first} is missing but {run_dir} has trained: delete {work} and start again")
            self.keep(0, initial_state(self.search.model))
        self.steps_per_epoch = self.search.steps_per_epoch
        self.space = self.search.space

    def keep(self, epoch: int, state: dict) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        save_atomic(self.weights_dir / f"after-{epoch}.pt", lambda p: torch.save(state, p))

    def weights(self, epoch: int) -> dict:
        return torch.load(self.weights_dir / f"after-{epoch}.pt", map_location="cpu", weights_only=True)

    def train_to(self, epoch: int) -> None:
        """Train until ``epoch`` epochs are done (from the engine's last checkpoint) and keep the weights."""
        if (self.weights_dir / f"after-{epoch}.pt").exists():
            return
        target = epoch * self.steps_per_epoch
        if self.search.step > target:
            raise SystemExit(f"the run is past epoch {epoch} but its weights were not kept: delete {self.work}")
        if self.search.step < target:
            last = epoch == self.config.epochs  # the last call finishes the run (result.json, cheap: 1 candidate)
            self.search.run(self.folder, progress=self.args.progress, stop_after=None if last else target)
        self.keep(epoch, self.search.model.state_dict())

    def train_loss(self, epoch: int) -> float | None:
        lo, hi = (epoch - 1) * self.steps_per_epoch, epoch * self.steps_per_epoch
        losses = [r["weight_loss"] for r in self.folder.records() if lo < r["step"] <= hi and "weight_loss" in r]
        return round(float(np.mean(losses)), 4) if losses else None


def score_cheap(run: SeedRun, epoch: int, study, record: dict) -> None:
    """τ of the metrics without forward passes after ``epoch`` epochs, over all cells and over the sample."""
    weights = {k: run.weights(k) for k in {0, min(1, epoch), epoch}}
    started = time.perf_counter()
    every = cheap_scores(run.space, weights, epoch, study["all_archs"], run.config.seed)
    pick = study["pick"]
    record["all"] = {m: None if s is None else tau(s, study["truth_all"]) for m, s in every.items()}
    record["scores"] = {m: None if s is None else np.round(np.asarray(s)[pick], 6).tolist() for m, s in every.items()}
    record["sample"] = {m: None if s is None else tau(s, study["truth_sample"]) for m, s in record["scores"].items()}
    record["cheap_seconds"] = round(time.perf_counter() - started, 2)
    print(f"seed {run.config.seed} epoch {epoch}: train loss {record['train_loss']}, τ over all cells (C10, C100, "
          "IN16): " + "; ".join(f"{m} {record['all'][m]}" for m in ALL_METRICS), flush=True)


def score_accuracies(run: SeedRun, epoch: int, study, record: dict, save) -> None:
    """Accuracy without and with ReBN of every sampled child after ``epoch`` epochs; ``save()`` every 10."""
    space, seed = run.space, run.config.seed
    supernet = space.build_supernet(**network_options(run.config, run.task)).to(run.device)
    supernet.load_state_dict(run.weights(epoch))
    partial = record.setdefault("acc_partial", {"acc_without_rebn": [], "acc_with_rebn": [], "seconds": 0.0})
    started = time.perf_counter()
    for i in range(len(partial["acc_with_rebn"]), len(study["archs"])):
        without, rebn = child_accuracies(space, supernet, study["archs"][i], study["val"], study["rebn_x"], run.device)
        partial["acc_without_rebn"].append(without)
        partial["acc_with_rebn"].append(rebn)
        if (i + 1) % 10 == 0 or i + 1 == len(study["archs"]):
            partial["seconds"] = round(partial["seconds"] + time.perf_counter() - started, 1)
            started = time.perf_counter()
            save()
            print(f"seed {seed} epoch {epoch}: accuracies of {i + 1}/{len(study['archs'])} children", flush=True)
    for m in ("acc_without_rebn", "acc_with_rebn"):
        record["scores"][m] = partial[m]
        record["sample"][m] = tau(partial[m], study["truth_sample"])
    record["acc_seconds"] = partial.pop("seconds")
    del record["acc_partial"]
    print(f"seed {seed} epoch {epoch}: τ on the {len(study['archs'])}-cell sample: "
          + "; ".join(f"{m} {record['sample'][m]}" for m in SAMPLE_METRICS), flush=True)


def run_seed(args, seed: int, task, device, study, work: Path, publish) -> None:
    """Train and score one seed into ``work``: every epoch's cheap metrics first (as soon as it is trained), then
    the accuracies of the ``--acc-epochs``; ``publish()`` rewrites the results after each step."""
    changes = parse_assignments(args.set, "--set")
    config = preset(args.preset, seed=seed, data=args.data, device=str(device),
                    strategy_options={"candidates": 1}, eval_batches=1, **changes)
    if config.strategy != "abs_uniform" or config.op_style != "nb201":
        raise SystemExit(f"preset {args.preset!r} is not ABS's supernet (strategy {config.strategy}, op_style "
                         f"{config.op_style}); use --preset abs or abs-cpu")
    progress_file = work / "epochs.json"
    epochs = load_json(progress_file, [])
    until = min(config.epochs, args.until_epoch or config.epochs)
    wanted = [e for e in sorted(study["acc_epochs"]) if e <= until]
    if len(epochs) >= until and all("all" in e for e in epochs[:until]) \
            and all("acc_with_rebn" in epochs[e - 1]["sample"] for e in wanted):
        return  # all done: nothing to train, so no run folder to open (nor to refuse a changed engine's config)
    run = SeedRun(args, config, task, device, work)
    save_json(work / "meta.json", {"config": config.to_dict(), "steps_per_epoch": run.steps_per_epoch})

    def save():
        save_json(progress_file, epochs)
        publish()

    for epoch in range(1, until + 1):
        if len(epochs) < epoch:
            started = time.perf_counter()
            run.train_to(epoch)
            epochs.append({"epoch": epoch, "official_epoch": epoch - 1, "train_loss": run.train_loss(epoch),
                           "train_seconds": round(time.perf_counter() - started, 1)})
            save()
        if "all" not in epochs[epoch - 1]:
            with torch.random.fork_rng(devices=[]):  # scoring must not move the training's random stream
                score_cheap(run, epoch, study, epochs[epoch - 1])
            save()
    for epoch in wanted:
        if "acc_with_rebn" not in epochs[epoch - 1]["sample"]:
            with torch.random.fork_rng(devices=[]):
                score_accuracies(run, epoch, study, epochs[epoch - 1], save)
            save()
    run.folder.close()


# --- the study -----------------------------------------------------------------------------------------
def summarise(runs) -> list[dict]:
    """Per epoch, per scope and metric: mean and std over seeds of τ on each dataset."""
    out = []
    for epoch in range(1, min(len(r["per_epoch"]) for r in runs) + 1):
        row = {"epoch": epoch, "official_epoch": epoch - 1,
               "train_loss": float(np.mean([r["per_epoch"][epoch - 1]["train_loss"] or np.nan for r in runs]))}
        for scope, metrics in (("all", ALL_METRICS), ("sample", SAMPLE_METRICS)):
            row[scope] = {}
            for m in metrics:
                values = [r["per_epoch"][epoch - 1][scope].get(m) for r in runs]
                values = np.array([v for v in values if v is not None], dtype=np.float64)
                if len(values):
                    row[scope][m] = {"mean": np.round(values.mean(0), 4).tolist(),
                                     "std": np.round(values.std(0), 4).tolist()}
        out.append(row)
    return out


def plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_epoch, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.2))
    summary = result["summary"]
    epochs = [row["epoch"] for row in summary]
    styles = {"angle_init": ("C0", "-"), "angle_epoch0": ("C1", "-"), "magnitude": ("C2", "-"),
              "random": ("C7", ":"), "acc_without_rebn": ("C3", "--"), "acc_with_rebn": ("C4", "--")}
    for m in SAMPLE_METRICS:
        scope = "all" if m in ALL_METRICS else "sample"
        points = [(row["epoch"], row[scope][m]["mean"][0]) for row in summary if m in row[scope]]
        if points:
            color, line = styles[m]
            ax_epoch.plot(*zip(*points), line, color=color, marker="o", label=f"{m} ({scope})")
    fig6 = [e + 1 for e in FIG6_EPOCHS]  # official epoch e = our e + 1 epochs trained
    ax_epoch.plot(fig6, np.mean(FIG6_CIFAR10["angle"], 0), "s", color="C1", mfc="none", label="paper Fig. 6: angle")
    ax_epoch.plot(fig6, np.mean(FIG6_CIFAR10["acc_with_rebn"], 0), "s", color="C4", mfc="none",
                  label="paper Fig. 6: acc w/ ReBN")
    ax_epoch.axhline(result["reference_all_cells"]["conv_params_tau"][0], color="k", ls="--", lw=0.8,
                     label="cell's parameter count (no training)")
    ax_epoch.axhline(0, color="k", lw=0.5)
    ax_epoch.set(xlabel="supernet epochs trained", ylabel="Kendall τ vs NB201 CIFAR-10",
                 title="τ after each epoch (mean over seeds)")
    ax_epoch.legend(fontsize=7)
    last = summary[-1]
    bars = [("angle_init", "all"), ("angle_epoch0", "all"), ("magnitude", "all"), ("random", "all"),
            ("acc_without_rebn", "sample"), ("acc_with_rebn", "sample")]
    bars = [(m, s) for m, s in bars if m in last[s]]
    width = 0.8 / (len(bars) + 2)
    for i, (m, s) in enumerate(bars):
        x = np.arange(len(DATASETS)) + (i - (len(bars) + 1) / 2) * width
        ax_bar.bar(x, last[s][m]["mean"], width, yerr=last[s][m]["std"], capsize=2, color=styles[m][0], label=m)
    for i, m in enumerate(("angle_epoch0", "acc_with_rebn")):
        x = np.arange(len(DATASETS)) + (len(bars) + i - (len(bars) + 1) / 2) * width
        ax_bar.bar(x, PAPER[m]["mean"], width, color=styles[m][0], alpha=0.35, hatch="//", label=f"paper: {m}")
    ax_bar.set_xticks(range(len(DATASETS)), DATASETS)
    ax_bar.axhline(0, color="k", lw=0.5)
    ax_bar.set(ylabel="Kendall τ", title=f"after epoch {last['epoch']}, {len(result['runs'])} seed(s)")
    ax_bar.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 path (as for 'oneshot search --data')")
    parser.add_argument("--preset", default="abs-cpu", help="abs (250 epochs) or abs-cpu (3 epochs)")
    parser.add_argument("--set", nargs="+", action="extend", metavar="NAME=VALUE", help="override preset settings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--archs", type=int, default=200, help="cells in the shared random sample")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=1000, help="held-out images per accuracy")
    parser.add_argument("--rebn-images", type=int, default=1024, help="training images to recompute BN stats")
    parser.add_argument("--until-epoch", type=int, help="stop after this epoch of the preset's run; a later "
                        "command with a larger value goes on (with --preset abs, whose lr schedule ignores the run's "
                        "length, any number of epochs)")
    parser.add_argument("--acc-epochs", type=int, nargs="*", help="epochs that get the accuracy metrics "
                        "(default: every epoch)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--work", help="folder of the runs and scores (default: runs/abs_ranking{tag})")
    parser.add_argument("--restart", action="store_true", help="delete --work first instead of continuing it")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--old-zero-grad", action="store_true",
                        help="an experiment: zero gradients instead of dropping them, as the official code's "
                             "torch did, so an op that is not sampled still gets weight decay and momentum steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    task = tasks.create("cifar10", data=args.data)
    table = load_table()
    space = create_space("nb201", ops=5)
    all_archs = list(space.enumerate())
    truth_all = table.accuracy[[table.index[space.to_string(a)] for a in all_archs]]
    pick = torch.randperm(len(all_archs), generator=torch.Generator().manual_seed(args.sample_seed))[:args.archs]
    pick = pick.numpy()
    probe = preset(args.preset, **parse_assignments(args.set, "--set"))
    (xw, _), (xa, ya) = split_train(task.images, probe.n_weight, probe.n_arch)
    epochs = probe.epochs
    study = {"all_archs": all_archs, "truth_all": truth_all, "pick": pick, "truth_sample": truth_all[pick],
             "archs": [all_archs[i] for i in pick], "val": (xa[:args.val_images], ya[:args.val_images]),
             "rebn_x": xw[:args.rebn_images],
             "acc_epochs": set(range(1, epochs + 1) if args.acc_epochs is None else args.acc_epochs)}

    # what a cell's size alone achieves: the number the angle has to beat
    reference = {f"{name}_tau": tau(conv_weights(space, all_archs, live), truth_all)
                 for name, live in (("conv_params", False), ("live_conv_params", True))}
    work = Path(args.work or f"runs/abs_ranking{args.tag}")
    if args.restart and work.exists():
        shutil.rmtree(work)
    out = Path(__file__).parent / "results" / f"abs_ranking{args.tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def publish() -> dict | None:
        runs = []
        for s in args.seeds:
            folder = work / f"seed{s}"
            epochs = [e for e in load_json(folder / "epochs.json", []) if "all" in e]
            if epochs:
                runs.append({"seed": s, **load_json(folder / "meta.json", {}), "per_epoch": epochs})
        if not runs:
            return None
        result = {"protocol": "ABS NB201 supernet (per-cell uniform sampling, lastact, 5 ops), τ after every epoch",
                  "preset": args.preset, "set": args.set or [], "old_zero_grad": args.old_zero_grad,
                  "device": str(device),
                  "threads": torch.get_num_threads(), "datasets": list(DATASETS), "archs": len(pick),
                  "sample_seed": args.sample_seed, "val_images": args.val_images, "rebn_images": args.rebn_images,
                  "acc_epochs": sorted(study["acc_epochs"]),
                  "wall_seconds_this_command": round(time.perf_counter() - started),
                  "summary": summarise(runs), "paper": PAPER, "reference_all_cells": reference,
                  "paper_fig6_cifar10": {"official_epochs": FIG6_EPOCHS, **FIG6_CIFAR10},
                  "sample": [space.to_string(all_archs[i]) for i in pick], "runs": runs}
        save_json(out.parent / (out.name + ".json"), result)
        plot(result, out.parent / (out.name + ".png"))
        return result

    for s in args.seeds:
        run_seed(args, s, task, device, study, work / f"seed{s}", publish)
    result = publish()
    print(json.dumps(result["summary"][-1], indent=1))

if __name__ == "__main__":
    main()
