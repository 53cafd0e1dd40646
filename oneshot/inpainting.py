"""ASNG-NAS's inpainting task (spec asng.md §3): masks, PSNR/SSIM, the one-shot search and the retraining.

The paper uses CelebA 64×64; it is not available here, so CIFAR-10 32×32 images (uint8 N×3×32×32, labels
unused) stand in, with every mask scaled to the image size (Center zeroes the central 16×16). The network sees
the masked image and is trained to output the whole clean image (MSE over all pixels, images in [0, 1]).

Search (spec §2, ASNG's own loop, not the classification trainer): the images are split 50/50 at random into a
weight half and an architecture half. Per iteration: one weight step (2 architectures asked in phase
"weight", mean MSE on one shared batch, clip 5, SGD 0.025 momentum 0.9, wd 0, cosine per iteration), then one
arch step (2 fresh architectures ranked by MSE on one shared batch of the other half, no grad, told in
order). The result is the strategy's mode (``derive()``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import strategies
from .errors import UserError
from .spaces.base import Architecture
from .spaces.inpainting import InpaintingSpace

MASKS = ("center", "pixel", "half")
PIXEL_DROP = 0.8


# --- masks: float (B, 1, H, W), 1 = known pixel, 0 = zeroed -----------------------------------------------
def make_mask(kind: str, batch: int, size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """Center: the central (size/2)² square; pixel: exactly round(80 %) of the pixels per image, chosen
    anew per image; half: one of the top/bottom/left/right halves per image."""
    m = torch.ones(batch, 1, size, size)
    if kind == "center":
        a = size // 4
        m[:, :, a: size - a, a: size - a] = 0
    elif kind == "pixel":
        drop = round(PIXEL_DROP * size * size)
        order = torch.rand(batch, size * size, generator=generator).argsort(1)
        m.view(batch, -1).scatter_(1, order[:, :drop], 0.0)
    elif kind == "half":
        h = size // 2
        for i, side in enumerate(torch.randint(4, (batch,), generator=generator).tolist()):
            rows = slice(0, h) if side == 0 else slice(h, size) if side == 1 else slice(None)
            cols = slice(0, h) if side == 2 else slice(h, size) if side == 3 else slice(None)
            m[i, :, rows, cols] = 0
    else:
        raise UserError(f"unknown mask {kind!r}; choose from {', '.join(MASKS)}")
    return m


# --- metrics on [0, 1] images ---------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image 10·log10(1 / MSE) (B,); identical images give inf (not capped: a perfect image is visible)."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(pred: torch.Tensor, target: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (B,) of Wang et al. 2004: Gaussian 11×11 window σ 1.5, C1 = (0.01)², C2 = (0.03)² for a
    data range of 1, statistics over 'valid' windows only (as the reference MATLAB code), per channel, then
    the mean of the map over channels and positions."""
    x, y = pred.double(), target.double()
    c = x.shape[1]
    w = _gaussian_window(size, sigma).to(x.device).expand(c, 1, size, size)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


# --- search -------------------------------------------------------------------------------------------------
@dataclass
class SearchOutcome:
    arch: Architecture        # the strategy's mode after the last iteration
    seconds: float
    weight_losses: list[float] = field(default_factory=list)   # mean MSE of each weight step
    arch_losses: list[float] = field(default_factory=list)     # mean MSE of each arch step's pair


def _batch(x_uint8: torch.Tensor, idx: torch.Tensor, kind: str, g: torch.Generator, device):
    clean = x_uint8[idx].to(device).float() / 255
    mask = make_mask(kind, len(idx), clean.shape[-1], g).to(device)
    return clean * mask, clean


def search_inpainting(space: InpaintingSpace, data_x_uint8: torch.Tensor, mask: str = "center",
                      strategy: str = "asng", iterations: int = 100, batch: int = 16, device="cpu",
                      seed: int = 0, lr: float = 0.025) -> SearchOutcome:
    if mask not in MASKS:
        raise UserError(f"unknown mask {mask!r}; choose from {', '.join(MASKS)}")
    if len(data_x_uint8) < 2 * batch:
        raise UserError(f"inpainting search needs at least 2×batch = {2 * batch} images, got {len(data_x_uint8)}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    strat = strategies.create(strategy, space, seed=seed)
    if strat.needs_gate_grad:
        raise UserError(f"inpainting search runs loss-ranking strategies only (e.g. asng); {strategy!r} needs "
                        "gate gradients")
    net = space.build_supernet().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    perm = torch.randperm(len(data_x_uint8), generator=g)
    halves = perm[: len(perm) // 2], perm[len(perm) // 2:]   # weights | architecture (random 50/50)
    out = SearchOutcome(arch=(), seconds=0.0)
    start = time.perf_counter()
    for _ in range(iterations):
        # weight step: the mean MSE of weight_samples architectures on one batch, one SGD step
        x, y = _batch(data_x_uint8, halves[0][torch.randint(len(halves[0]), (batch,), generator=g)], mask, g, device)
        opt.zero_grad(set_to_none=True)
        samples, losses = [strat.ask("weight") for _ in range(strat.weight_samples)], []
        for s in samples:
            loss = F.mse_loss(net(x, s.arch), y)
            (loss / len(samples)).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        for s, l in zip(samples, losses):
            strat.tell(s, l, None, "weight")
        out.weight_losses.append(sum(losses) / len(losses))
        # arch step: arch_samples fresh architectures ranked on one shared batch of the other half
        if strat.updates_theta:
            x, y = _batch(data_x_uint8, halves[1][torch.randint(len(halves[1]), (batch,), generator=g)], mask, g,
                          device)
            losses = []
            for _ in range(strat.arch_samples):
                s = strat.ask("arch")
                with torch.no_grad():
                    losses.append(F.mse_loss(net(x, s.arch), y).item())
                strat.tell(s, losses[-1], None, "arch")
            out.arch_losses.append(sum(losses) / len(losses))
    out.arch, out.seconds = tuple(strat.derive()), time.perf_counter() - start
    return out


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
    net = space.build_network(arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start, step = time.perf_counter(), 0
    while True:
        done = step / iterations if iterations is not None else (time.perf_counter() - start) / seconds
        if done >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 ** ((done >= 0.4) + (done >= 0.8)))
        x, y = _batch(train_x, torch.randint(len(train_x), (batch,), generator=g), mask, g, device)
        loss = F.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    train_seconds = time.perf_counter() - start
    return {"arch": space.to_string(arch), "path": space.describe(arch), **evaluate(net, test_x, mask, seed, device),
            "iterations": step, "train_seconds": train_seconds,
            "params": sum(p.numel() for p in net.parameters())}


@torch.no_grad()
def evaluate(net, test_x: torch.Tensor, mask: str, seed: int = 0, device="cpu", batch: int = 256) -> dict:
    """Mean test PSNR and SSIM of the clamped output against the clean images (masks seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed + 1)
    p, s = [], []
    for i in range(0, len(test_x), batch):
        x, y = _batch(test_x, torch.arange(i, min(i + batch, len(test_x))), mask, g, device)
        pred = net(x).clamp(0, 1)
        p.append(psnr(pred, y))
        s.append(ssim(pred, y))
    return {"psnr": torch.cat(p).mean().item(), "ssim": torch.cat(s).mean().item()}


def baseline(space: InpaintingSpace, train_x, test_x, **kwargs) -> dict:
    """The hand-designed CAE (``space.baseline()``: chain of L 3×3 layers, 64·s channels, skip on every layer),
    trained and tested exactly like a searched architecture; give it the same ``seconds`` for a fair comparison."""
    return train_and_evaluate(space, space.baseline(), train_x, test_x, **kwargs)
