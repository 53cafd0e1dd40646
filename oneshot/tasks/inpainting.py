"""ASNG-NAS's inpainting task (spec asng.md §3): restore the masked pixels of an image.

The paper uses CelebA 64×64; it is not available here, so CIFAR-10 images (uint8 N×3×H×W, labels unused) stand
in, with every mask scaled to the image size (Center zeroes the central half×half square). The network sees the
masked image and is trained to output the whole clean image: loss MSE over all pixels, images in [0, 1]. The
metric is the PSNR (and SSIM) of the output clamped to [0, 1], per image, averaged.

Search streams: the training images are split 50/50 at random (seeded by the search's seed) into a weight half and
an architecture half; each batch draws images with replacement and a fresh mask per image (as the ASNG-NAS code).
Such a stream has no epochs, so ``steps_per_epoch`` is only the trainer's unit for the weight learning rate's
cosine and for checkpoints: 1 (the default) gives the protocol's cosine per iteration. Evaluation ("test": the
``test_images`` of a fixed random subset of the test set; "arch": the architecture half) uses masks from a
generator seeded by ``eval_seed``, so two networks are always scored on the same masked images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import DrawnStream, Task, register

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


def masked_batch(images_uint8: torch.Tensor, index: torch.Tensor, kind: str, generator: torch.Generator,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, clean) floats in [0, 1] of the images ``index``, one mask per image drawn from ``generator``."""
    clean = images_uint8[index].to(device).float() / 255
    mask = make_mask(kind, len(index), clean.shape[-1], generator).to(device)
    return clean * mask, clean


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


@torch.no_grad()
def score(forward, batches) -> dict:
    """Mean PSNR and SSIM of ``forward(masked)`` clamped to [0, 1] against the clean images."""
    p, s = [], []
    for masked, clean in batches:
        pred = forward(masked).clamp(0, 1)
        p.append(psnr(pred, clean))
        s.append(ssim(pred, clean))
    return {"psnr": torch.cat(p).mean().item(), "ssim": torch.cat(s).mean().item()}


# --- the stream and the task ----------------------------------------------------------------------------
class MaskedImages(DrawnStream):
    """Endless batches (masked, clean) of images drawn with replacement, a fresh mask per image; resumable."""

    def __init__(self, images_uint8: torch.Tensor, batch_size: int, mask: str, device, seed: int,
                 steps_per_epoch: int = 1):
        super().__init__(seed, steps_per_epoch, device)
        self.images, self.batch_size, self.mask = images_uint8, batch_size, mask

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.images), (self.batch_size,), generator=generator)
        return masked_batch(self.images, index, self.mask, generator, self.device)


class InpaintingTask(Task):
    name = "inpainting"
    metric = "psnr"
    higher_is_better = True

    def __init__(self, train_x: torch.Tensor, test_x: torch.Tensor, mask: str = "center",
                 steps_per_epoch: int = 1, eval_seed: int = 1):
        if mask not in MASKS:
            raise UserError(f"unknown mask {mask!r}; choose from {', '.join(MASKS)}")
        for what, x in (("training", train_x), ("test", test_x)):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != x.shape[-2] or len(x) == 0:
                raise UserError(f"inpainting: the {what} images must be a non-empty uint8 N x C x S x S tensor, "
                                f"got {x.dtype} {tuple(x.shape)}")
        if steps_per_epoch < 1:
            raise UserError(f"inpainting: steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.train_x, self.test_x, self.mask = train_x, test_x, mask
        self.steps_per_epoch, self.eval_seed = steps_per_epoch, eval_seed
        self.input_shape = tuple(train_x.shape[1:])
        self.num_outputs = train_x.shape[1]  # output channels: the whole image
        self.arch_x: torch.Tensor | None = None

    def halves(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A random 50/50 split of the training images (weights | architecture), seeded by ``seed``."""
        perm = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(seed))
        return perm[: len(perm) // 2], perm[len(perm) // 2:]

    def search_streams(self, batch_size, device, seed, **_):
        if len(self.train_x) < 2 * batch_size:
            raise UserError(f"inpainting search needs at least 2 x batch = {2 * batch_size} images, "
                            f"got {len(self.train_x)}")
        weights, arch = self.halves(seed)
        self.arch_x = self.train_x[arch]
        return (MaskedImages(self.train_x[weights], batch_size, self.mask, device, seed + 1, self.steps_per_epoch),
                MaskedImages(self.arch_x, batch_size, self.mask, device, seed + 2, self.steps_per_epoch))

    def train_stream(self, batch_size, device, seed, **_):
        return MaskedImages(self.train_x, batch_size, self.mask, device, seed, self.steps_per_epoch)

    def eval_batches(self, split, batch_size, device, limit=None):
        if split == "test":
            x = self.test_x
        elif split == "arch":
            if self.arch_x is None:
                raise RuntimeError("the architecture split exists once search_streams has been called")
            x = self.arch_x
        else:
            raise UserError(f"inpainting: no split {split!r}; use arch or test")
        if limit is not None:
            x = x[:limit]
        generator = torch.Generator().manual_seed(self.eval_seed)
        return (masked_batch(x, torch.arange(i, min(i + batch_size, len(x))), self.mask, generator, device)
                for i in range(0, len(x), batch_size))

    def loss(self, forward, batch):
        masked, clean = batch
        return F.mse_loss(forward(masked), clean)

    def evaluate(self, forward, split, device, batch_size=256, limit=None):
        return score(forward, self.eval_batches(split, batch_size, device, limit))

    def describe(self) -> dict:
        return {**super().describe(), "mask": self.mask, "test_images": len(self.test_x)}


@register("inpainting", "ASNG-NAS inpainting: restore masked images (--data: CIFAR-10 as a CelebA stand-in; "
                        "mask=center|pixel|half, test_images=N), MSE loss, PSNR/SSIM")
def inpainting(data: str | None = None, mask: str = "center", test_images: int = 1000, size: int | None = None,
               steps_per_epoch: int = 1, eval_seed: int = 1, **unknown) -> InpaintingTask:
    from ..data import load_cifar10

    if unknown:
        raise UserError(f"inpainting: unknown --task-option {', '.join(sorted(unknown))}; options: mask, "
                        "test_images, size, steps_per_epoch, eval_seed")
    if mask not in MASKS:  # before the images are read
        raise UserError(f"unknown mask {mask!r}; choose from {', '.join(MASKS)}")
    if test_images < 1:
        raise UserError(f"inpainting: test_images must be at least 1, got {test_images}")
    images = load_cifar10(data, size=size)
    # a fixed random subset: the test set is sorted by class, so its first images would all be airplanes
    subset = torch.randperm(len(images.test_x), generator=torch.Generator().manual_seed(0))[:test_images]
    return InpaintingTask(images.train_x, images.test_x[subset], mask, steps_per_epoch, eval_seed)
