import os
from pathlib import Path

import pytest
import torch

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar_path() -> str:
    if not CIFAR.exists():
        pytest.fail(f"the shared CIFAR-10 tarball is missing at {CIFAR}: tests need ../shared/data beside the repo")
    return str(CIFAR)


@pytest.fixture(scope="session")
def synthetic_cifar():
    """A small random CIFAR-shaped data set: fast, for tests of the loop's bookkeeping."""
    from oneshot.data import Cifar10

    g = torch.Generator().manual_seed(0)
    n = 1024
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return Cifar10(train_x=x, train_y=y, test_x=x[:64], test_y=y[:64], classes=classes)
