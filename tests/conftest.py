import os
from pathlib import Path

import pytest
import torch

# The tests' tensors are tiny: one thread is as fast as two, and immune to oversubscription when the machine
# is shared (two OpenMP threads per process on a busy 2-core box can run 50x slower).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def tiny_pickles(tmp_path_factory) -> str:
    """A small data set in the official CIFAR-10 python format (5 x 120 training and 64 test images)."""
    import pickle

    import numpy as np

    root = tmp_path_factory.mktemp("tiny") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 120) for i in range(1, 6)] + [("test_batch", 64)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (root / name).write_bytes(pickle.dumps(batch))
    return str(root)


def interrupted_and_resumed(config, data, folder, stop_after: int = 13, space=None) -> dict:
    """Run a search to ``stop_after`` iterations, then resume it from its last checkpoint in a fresh ``Search``
    (as after a kill) and return the final result."""
    from oneshot.runs import RunFolder
    from oneshot.trainer import Search

    first = Search(config, data, torch.device("cpu"), space=space)
    assert first.run(RunFolder(folder, config.to_dict()), progress=False, stop_after=stop_after) is None
    resumed_folder = RunFolder(folder, config.to_dict(), resume=True)
    second = Search(config, data, torch.device("cpu"), space=space)
    second.load_state_dict(resumed_folder.resumed_state)
    return second.run(resumed_folder, progress=False)


def experiment(name: str):
    """The driver ``experiments/NAME.py`` of this repository, loaded from its file: experiments/ is part of the
    repository, not of the installed package, so it is not imported by package name."""
    import importlib.util
    import sys
    from pathlib import Path

    module_name = f"_experiment_{name}"
    if module_name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
