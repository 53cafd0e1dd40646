"""Image classification: CIFAR-10, or any image-folder tree ``train/<class>/``, ``test/<class>/``.

The whole training set lives on the device as uint8 and batches are augmented there (``data.Batches``): random
crop with 4-pixel padding and flips, optional cutout, normalised with the CIFAR-10 channel statistics (a fine
approximation for natural images; the network's first BN absorbs the rest). The search splits a fixed shuffle
of the training images into a weight half and an architecture half (``data.split_train``).
"""

from __future__ import annotations

import torch

from ..data import CLASSES, Batches, Cifar10, eval_batches, load_cifar10, split_train
from ..errors import UserError
from .base import Stream, Task, register


class ImageClassification(Task):
    metric = "accuracy"

    def __init__(self, images: Cifar10, name: str = "image-folder"):
        if images.train_x.dtype != torch.uint8 or images.train_x.dim() != 4 or images.train_x.shape[1] != 3:
            raise UserError(f"{name}: images must be uint8 N x 3 x H x W, got {images.train_x.dtype} "
                            f"{tuple(images.train_x.shape)}")
        self.images, self.name = images, name
        self.input_shape = tuple(images.train_x.shape[1:])
        self.num_outputs = len(images.classes)
        labels = torch.cat([images.train_y, images.test_y])
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_outputs):
            raise UserError(f"{name}: labels must lie in 0..{self.num_outputs - 1}")
        # The NB201 table holds CIFAR-10 accuracies: they mean something only for CIFAR-10 itself.
        is_cifar10 = tuple(images.classes) == CLASSES and self.input_shape == (3, 32, 32)
        self.benchmark = ("nb201", "cifar10") if is_cifar10 else None
        self.arch_split: tuple[torch.Tensor, torch.Tensor] | None = None

    def search_streams(self, batch_size, device, seed, n_weight=25_000, n_arch=25_000, augment=True, cutout=0,
                       **_) -> tuple[Stream, Stream]:
        (xw, yw), (xa, ya) = split_train(self.images, n_weight, n_arch)
        self.arch_split = (xa, ya)
        weights = Batches(xw, yw, batch_size, device, augment=augment, seed=seed, cutout=cutout)
        # n_arch = 0: single-level searches (SNAS) train θ on the weight batches and need no second split
        arch = Batches(xa, ya, batch_size, device, augment=augment, seed=seed + 1, cutout=cutout) if n_arch else None
        return weights, arch

    def train_stream(self, batch_size, device, seed, n_train=None, augment=True, cutout=0, **_) -> Stream:
        # the fixed shuffle of split_train: the training set is sorted by class, so a prefix would hold one class
        (x, y), _ = split_train(self.images, len(self.images.train_x) if n_train is None else n_train, 0)
        return Batches(x, y, batch_size, device, augment=augment, seed=seed, cutout=cutout)

    def eval_batches(self, split, batch_size, device, limit=None):
        if split == "arch":
            if self.arch_split is None:
                raise RuntimeError("the architecture split exists once search_streams has been called")
            x, y = self.arch_split
        elif split == "test":
            # a fixed shuffle: the test set is stored sorted by class, and a batch of one class (or a ``limit``
            # prefix of one class) evaluated with batch statistics, as a supernet is, measures nothing
            order = torch.randperm(len(self.images.test_y), generator=torch.Generator().manual_seed(0))
            x, y = self.images.test_x[order], self.images.test_y[order]
        else:
            raise UserError(f"{self.name}: no split {split!r}; use arch or test")
        if limit is not None:
            x, y = x[:limit], y[:limit]  # only these go to the device
        return eval_batches(x, y, batch_size, device)


@register("cifar10", "CIFAR-10 classification (--data: image-folder tree, its .tar.gz, or cifar-10-batches-py)")
def cifar10(data: str | None = None, size: int | None = None) -> ImageClassification:
    return ImageClassification(load_cifar10(data, size=size), "cifar10")


@register("image-folder", "your images: --data DIR with train/<class>/ and test/<class>/ (any classes, any square "
                          "size; size=N resizes)")
def image_folder(data: str | None = None, size: int | None = None) -> ImageClassification:
    if data is None:
        raise UserError("the image-folder task needs --data DIR holding train/<class>/ and test/<class>/ images")
    return ImageClassification(load_cifar10(data, size=size), "image-folder")
