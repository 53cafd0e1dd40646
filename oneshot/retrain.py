"""Training a searched architecture from scratch and testing it (the evaluator for spaces without a table).

The ASNG-NAS / DARTS protocol (spec asng.md §3): the stand-alone child with affine BN, SGD (momentum 0.9,
cosine lr, weight decay, gradient clipping at 5), cutout, an auxiliary head weighted 0.4, drop-path growing
linearly to 0.3, the full training set, and the test error of the last epoch. ``paper`` is that protocol; ``cpu`` a
documented reduction (8 cells at C=16, 10k images, 10 epochs) that runs in minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import Batches, Cifar10, eval_batches, split_train
from .errors import UserError


@dataclass
class RetrainConfig:
    cells: int = 20
    channels: int = 0            # 0: the widest network under max_params (binary search)
    max_params: float = 4.0e6
    epochs: int = 600
    batch_size: int = 80
    n_train: int = 50_000
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 16
    aux_weight: float = 0.4
    drop_path: float = 0.3
    seed: int = 0


RETRAIN_PRESETS = {
    "paper": RetrainConfig(),
    "cpu": RetrainConfig(cells=8, channels=16, epochs=10, batch_size=64, n_train=10_000),
    "smoke": RetrainConfig(cells=3, channels=4, epochs=1, batch_size=32, n_train=256),
}


def retrain_preset(name: str, **changes) -> RetrainConfig:
    if name not in RETRAIN_PRESETS:
        raise UserError(f"unknown retraining preset {name!r}; choose from {', '.join(RETRAIN_PRESETS)}")
    return replace(RETRAIN_PRESETS[name], **changes)


def test_accuracy(model: torch.nn.Module, data: Cifar10, device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in eval_batches(data.test_x, data.test_y, 500, device):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            correct += (logits.argmax(1) == y).sum().item()
    return correct / len(data.test_y)


def retrain(space, arch, data: Cifar10, config: RetrainConfig, device: torch.device, progress: bool = True) -> dict:
    """Train ``arch`` of ``space`` from scratch on ``n_train`` training images (all 50k in the paper protocol);
    test on the test set."""
    from tqdm.auto import tqdm

    if not hasattr(space, "channels_for_budget"):
        raise UserError(f"retraining is implemented for enas_micro, not {space.name!r}"
                        + (" (NB201 cells are scored by 'oneshot evaluate')" if space.name == "nb201" else ""))
    if config.n_train > len(data.train_x):
        raise UserError(f"n_train {config.n_train} exceeds the {len(data.train_x)} training images; lower it")
    torch.manual_seed(config.seed)
    channels = config.channels or space.channels_for_budget(arch, config.max_params, config.cells)
    model = space.build_child(arch, channels, config.cells, auxiliary=config.aux_weight > 0).to(device)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("aux"))
    # the fixed shuffle of split_train: the training set is sorted by class, so a prefix would hold one class
    (x, y), _ = split_train(data, config.n_train, 0)
    stream = Batches(x, y, config.batch_size, device, augment=True, seed=config.seed, cutout=config.cutout)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    start = time.perf_counter()
    bar = tqdm(total=config.epochs * stream.steps_per_epoch, disable=not progress, desc="retrain", unit="it")
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        model.drop_path = config.drop_path * epoch / config.epochs
        model.train()
        for _ in range(stream.steps_per_epoch):
            x, y = next(stream)
            logits, aux = model(x)
            loss = F.cross_entropy(logits, y)
            if aux is not None:
                loss = loss + config.aux_weight * F.cross_entropy(aux, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            bar.update()
        if not math.isfinite(loss.item()):
            raise UserError(f"the retraining loss became {loss.item()} in epoch {epoch}; lower --set lr=...")
    bar.close()
    accuracy = test_accuracy(model, data, device)
    return {"architecture": space.to_string(arch), "channels": channels, "cells": config.cells,
            "parameters": params, "test_accuracy": accuracy, "test_error_percent": round(100 * (1 - accuracy), 2),
            "train_seconds": round(time.perf_counter() - start, 1), "device": str(device), "config": asdict(config)}


def retrain_run(run_dir: str, data: Cifar10, config: RetrainConfig, device: torch.device, progress: bool = True,
                preset_name: str = "") -> dict:
    """Retrain the architecture a search run found; writes ``retrain[-PRESET].json`` beside its result.json."""
    from .spaces import create_space

    folder = Path(run_dir)
    try:
        result = json.loads((folder / "result.json").read_text())
        search_config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} holds no finished search (result.json); pass the --out of 'oneshot search'") from None
    space = create_space(search_config["space"], **search_config.get("space_options", {}))
    record = retrain(space, space.from_string(result["architecture"]), data, config, device, progress)
    record["search_seconds"] = result.get("search_seconds")
    name = f"retrain-{preset_name}.json" if preset_name else "retrain.json"
    (folder / name).write_text(json.dumps(record, indent=2))
    return record
