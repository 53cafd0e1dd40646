"""ASNG-NAS's inpainting experiment (spec asng.md §3): search a CAE, retrain it and a hand-designed CAE, compare.

The task (masks, MSE, PSNR/SSIM, CIFAR-10 standing in for CelebA) is ``oneshot.tasks.inpainting``; the space is
``oneshot.spaces.inpainting``. The search is a ``trainer.Search`` run (spec §2, ASNG's protocol as settings): per
iteration one arch step (ASNG asks a pair, ranked by MSE on one shared batch of the architecture half, no grad)
and one weight step (the mean MSE of another asked pair on one shared batch of the weight half; SGD lr 0.025,
momentum 0.9, no weight decay, gradient norm clipped at 5, cosine per iteration: the task's epoch is one step).
The result is the strategy's mode (``derive()``).

Then the found CAE and the hand-designed one (``space.baseline()``: L chained 3×3 layers with skips) are each
trained from scratch by the library's retraining loop, ``retrain.train`` with the ``inpainting`` preset (Adam
1e-3, × 0.1 at 40 % and 80 % of the iterations, clipping at 5, the search's batch size), for the same number of
iterations (the official code retrains for an iteration budget, 500k; before this driver used ``retrain.train``
it gave both networks the same seconds instead), and tested by the task's ``evaluate`` on the same masked test
images (``eval_seed`` 1 whatever the seed, so runs of different seeds are scored on the same images).

Writes ``inpaint.json``.

    python experiments/inpainting.py --data ../shared/data/cifar10 --encoding int --out results/inpaint-int
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from oneshot import strategies
from oneshot.cli import Parser, guarded
from oneshot.config import SearchConfig
from oneshot.errors import UserError
from oneshot.retrain import RetrainConfig, retrain_preset, train
from oneshot.runs import MemoryFolder
from oneshot.spaces.inpainting import InpaintingSpace
from oneshot.tasks.inpainting import MASKS, InpaintingTask
from oneshot.trainer import Search

PROG = "experiments/inpainting.py"


# --- search -------------------------------------------------------------------------------------------------
def search_config(space: InpaintingSpace, iterations: int = 100, batch: int = 16, seed: int = 0,
                  strategy: str = "asng", lr: float = 0.025, mask: str = "center", device="cpu",
                  log_every: int = 100, **changes) -> SearchConfig:
    """The ASNG-NAS inpainting protocol as search settings (one epoch = one iteration: cosine per iteration)."""
    settings = dict(
        task="inpainting", task_options={"mask": mask}, space="inpainting",
        space_options={"encoding": space.encoding, "layers": space.layers, "channel_scale": space.channel_scale},
        strategy=strategy, seed=seed, batch_size=batch, epochs=iterations, warmup_epochs=0, augment=False,
        w_lr=lr, w_momentum=0.9, w_nesterov=False, w_weight_decay=0.0, w_grad_clip=5.0, device=str(device),
        log_every=min(log_every, iterations), checkpoint_every=iterations, preset="inpainting")
    return SearchConfig().replace(**{**settings, **changes}).validated()


def search_inpainting(space: InpaintingSpace, task: InpaintingTask, iterations: int = 100, batch: int = 16,
                      device="cpu", seed: int = 0, strategy: str = "asng", lr: float = 0.025,
                      progress: bool = False) -> dict:
    """One search through ``trainer.Search`` (kept in memory); returns ``{"arch", "config", "result", "log"}``."""
    if task.steps_per_epoch != 1:
        raise UserError("the inpainting protocol steps the cosine every iteration: build the task with "
                        "steps_per_epoch=1")
    if strategies.create(strategy, space).needs_gate_grad:
        raise UserError(f"inpainting search runs loss-ranking strategies only (e.g. asng); {strategy!r} needs "
                        "gate gradients")
    config = search_config(space, iterations, batch, seed, strategy, lr, task.mask, device)
    run = Search(config, task, torch.device(device), space=space)
    folder = MemoryFolder()
    run.run(folder, progress=progress)
    return {"arch": space.from_string(folder.result["architecture"]), "config": config.to_dict(),
            "result": folder.result, "log": folder.records}


# --- retraining (the library's loop) ------------------------------------------------------------------------
def retrain_config(iterations: int, batch: int = 16, seed: int = 0, **changes) -> RetrainConfig:
    """The ``inpainting`` retraining preset with an iteration budget: on a task of one step per epoch (as the
    search's), ``epochs`` counts iterations, and the step schedule drops at 40 % and 80 % of them."""
    settings = dict(epochs=iterations, batch_size=batch, seed=seed, task_options={})  # the caller builds the task
    return retrain_preset("cpu", "inpainting", **{**settings, **changes}).validated()


def retrain_network(space: InpaintingSpace, arch, task: InpaintingTask, iterations: int, batch: int = 16,
                    device="cpu", seed: int = 0, progress: bool = False, **changes) -> dict:
    """Train ``arch`` from scratch for ``iterations`` steps with ``retrain.train`` and test it; returns its
    result (``test_psnr``, ``scores["test"]`` with PSNR and SSIM, ``parameters``, ``steps``, ...) and ``path``,
    the architecture's active layers."""
    if task.steps_per_epoch != 1:
        raise UserError("the iteration budget needs a task of one step per epoch: build it with steps_per_epoch=1")
    config = retrain_config(iterations, batch, seed, **changes)
    result = train(space, arch, task, config, torch.device(device), progress=progress)
    return {**result, "path": space.describe(space.check(arch))}


# --- the command line ------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="ASNG-NAS inpainting: search a CAE (Int or Cat encoding), retrain it and "
                                           "a hand-designed CAE for the same iterations, report PSNR/SSIM.",
                    epilog=f"example: python {PROG} --data DIR --encoding int --out runs/inpaint")
    parser.add_argument("--data", help="CIFAR-10 (stands in for CelebA, which is not available here)")
    parser.add_argument("--encoding", choices=["int", "cat"], default="int")
    parser.add_argument("--mask", choices=list(MASKS), default="center")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--channel-scale", type=float, default=1 / 8, help="1 = the paper's 64..256 channels")
    parser.add_argument("--iterations", type=int, default=4000, help="search iterations")
    parser.add_argument("--retrain-iterations", type=int, default=2000,
                        help="training iterations of each final network (the paper: 500,000)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/inpaint", help="folder for inpaint.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    from oneshot.tasks.inpainting import inpainting
    from oneshot.trainer import resolve_device

    if not (math.isfinite(args.channel_scale) and args.channel_scale > 0):
        raise UserError(f"--channel-scale must be a positive number, got {args.channel_scale}")
    for flag, value in (("--iterations", args.iterations), ("--retrain-iterations", args.retrain_iterations),
                        ("--batch", args.batch), ("--test-images", args.test_images)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    device = resolve_device(args.device)
    space = InpaintingSpace(args.encoding, layers=args.layers, channel_scale=args.channel_scale)
    # every setting is checked before the images are read
    search_config(space, args.iterations, args.batch, args.seed, mask=args.mask, device=device)
    retrain = retrain_config(args.retrain_iterations, args.batch, args.seed)
    task = inpainting(data=args.data, mask=args.mask, test_images=args.test_images)
    found = search_inpainting(space, task, iterations=args.iterations, batch=args.batch, device=device,
                              seed=args.seed, progress=not args.quiet)
    common = dict(iterations=args.retrain_iterations, batch=args.batch, device=device, seed=args.seed,
                  progress=not args.quiet)
    searched = retrain_network(space, found["arch"], task, **common)
    hand = retrain_network(space, space.baseline(), task, **common)
    record = {"settings": vars(args), "search_seconds": found["result"]["search_seconds"],
              "search_cpu_seconds": found["result"]["cpu_seconds"],
              "search": {"config": found["config"], "result": found["result"]}, "retrain": retrain.to_dict(),
              "searched": searched, "baseline": hand}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "inpaint.json").write_text(json.dumps(record, indent=2, default=float))
    for name, r in (("searched", searched), ("hand-designed", hand)):
        print(f"{name:<14} PSNR {r['test_psnr']:.2f} dB  SSIM {r['scores']['test']['ssim']:.3f}  "
              f"params {r['parameters']}  {r['path']}")
    print(f"-> {args.out}/inpaint.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    return guarded(PROG, lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
