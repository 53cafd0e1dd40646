"""ASNG-NAS's inpainting experiment (spec asng.md §3): search a CAE, retrain it and a hand-designed CAE, compare.

The task (masks, MSE, PSNR/SSIM, CIFAR-10 standing in for CelebA) is ``tasks.inpainting``; the space is
``spaces.inpainting``. The search is a ``trainer.Search`` run (spec §2, ASNG's protocol as settings): per
iteration one arch step (ASNG asks a pair, ranked by MSE on one shared batch of the architecture half, no grad)
and one weight step (the mean MSE of another asked pair on one shared batch of the weight half; SGD lr 0.025,
momentum 0.9, no weight decay, gradient norm clipped at 5, cosine per iteration: the task's epoch is one step).
The result is the strategy's mode (``derive()``).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .config import SearchConfig
from .errors import UserError
from .spaces.inpainting import InpaintingSpace
from .tasks.inpainting import InpaintingTask, masked_batch, score


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
    from . import strategies
    from .toy import MemoryFolder
    from .trainer import Search

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


# --- retraining and evaluation ------------------------------------------------------------------------------
def train_and_evaluate(space: InpaintingSpace, arch, train_x: torch.Tensor, test_x: torch.Tensor,
                       mask: str = "center", iterations: int | None = None, seconds: float | None = None,
                       batch: int = 16, device="cpu", seed: int = 0, lr: float = 1e-3) -> dict:
    """Train a stand-alone network (Adam, lr ×0.1 at 40 % and 80 % of the budget, as the official retraining)
    for ``iterations`` steps or ``seconds`` of wall time, then test PSNR/SSIM on ``test_x`` with masks drawn
    from a generator seeded by ``seed`` (so two networks with the same seed see the same test masks)."""
    if (iterations is None) == (seconds is None):
        raise UserError("train_and_evaluate needs exactly one budget: iterations or seconds")
    arch = space.check(arch)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = space.build_child(arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start, step = time.perf_counter(), 0
    while True:
        done = step / iterations if iterations is not None else (time.perf_counter() - start) / seconds
        if done >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 ** ((done >= 0.4) + (done >= 0.8)))
        x, y = masked_batch(train_x, torch.randint(len(train_x), (batch,), generator=g), mask, g, device)
        loss = F.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    train_seconds = time.perf_counter() - start
    return {"arch": space.to_string(arch), "path": space.describe(arch), **evaluate(net, test_x, mask, seed, device),
            "iterations": step, "train_seconds": train_seconds,
            "params": sum(p.numel() for p in net.parameters())}


def evaluate(net, test_x: torch.Tensor, mask: str, seed: int = 0, device="cpu", batch: int = 256) -> dict:
    """Mean test PSNR and SSIM of the clamped output against the clean images (masks seeded by ``seed`` + 1:
    the inpainting task's test split with ``eval_seed = seed + 1``)."""
    g = torch.Generator().manual_seed(seed + 1)
    return score(net, (masked_batch(test_x, torch.arange(i, min(i + batch, len(test_x))), mask, g, device)
                       for i in range(0, len(test_x), batch)))


def baseline(space: InpaintingSpace, train_x, test_x, **kwargs) -> dict:
    """The hand-designed CAE (``space.baseline()``: chain of L 3×3 layers, 64·s channels, skip on every layer),
    trained and tested exactly like a searched architecture; give it the same ``seconds`` for a fair comparison."""
    return train_and_evaluate(space, space.baseline(), train_x, test_x, **kwargs)
