"""The one search loop: warm-up, then an architecture step before every weight step.

The trainer reads a strategy's declared pattern (``arch_batch``, ``needs_gate_grad``, ``updates_theta``,
``derive_by_validation``) and never asks which strategy it runs. A run folder holds ``config.json``,
``log.jsonl``, ``checkpoint.pt``, ``result.json`` and ``search.png``; ``resume=True`` continues from the
checkpoint and, on a CPU with the same seed, ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import strategies
from .config import SearchConfig
from .data import Batches, Cifar10, eval_batches, split_train
from .distributed import Group
from .errors import UserError
from .runs import RunFolder, crash_point
from .spaces import create_space


def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module):
    """Evaluate with each batch's own BN statistics, leaving running statistics untouched.

    A sampled child's running statistics in a supernet are an average over other children: useless.
    """
    was_training = model.training
    saved = {}
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            saved[m] = m.momentum
            m.momentum = 0.0
    model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        model.train(was_training)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def check_batch_split(config: SearchConfig, world: int) -> None:
    if config.micro_batches < 1 or config.batch_size % (world * config.micro_batches):
        raise UserError(f"batch_size {config.batch_size} must split evenly into {world} processes x "
                        f"{config.micro_batches} micro-batches; change --set batch_size or micro_batches")


class Search:
    """Everything one search run holds; ``run()`` trains, ``state_dict()`` is the checkpoint."""

    def __init__(self, config: SearchConfig, data: Cifar10, device: torch.device, group: Group = Group()):
        self.config, self.device, self.group = config, device, group
        check_batch_split(config, group.world)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.space = create_space(config.space, **config.space_options)
        if config.restrict:
            self.space = self.space.restrict(config.restrict)
        self.model = self.space.build_supernet(channels=config.channels, cells_per_stage=config.cells_per_stage,
                                               op_style=config.op_style).to(device)
        self.strategy = strategies.create(config.strategy, self.space, seed=config.seed, device=device,
                                          **{"lr": config.a_lr, **config.strategy_options})
        (xw, yw), (xa, ya) = split_train(data, config.n_weight, config.n_arch)
        self.train_stream = Batches(xw, yw, config.batch_size, device, augment=config.augment, seed=config.seed,
                                    cutout=config.cutout)
        self.val_stream = Batches(xa, ya, config.batch_size, device, augment=config.augment, seed=config.seed + 1,
                                  cutout=config.cutout)
        self.val_data = (xa, ya)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.w_lr, momentum=config.w_momentum,
                                         nesterov=config.w_nesterov)
        self.steps_per_epoch = self.train_stream.steps_per_epoch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.search_steps = (config.epochs - config.warmup_epochs) * self.steps_per_epoch
        self.step = 0            # iterations done (one weight step each, plus an arch step after warm-up)
        self.arch_steps = 0
        self.best_sampled: tuple[float, tuple] | None = None  # (lowest single val-batch loss, arch): "PB"
        self.pending_losses: dict[str, list[float]] = {"weight": [], "arch": []}  # since the last log record
        self.elapsed = 0.0       # search seconds over all sessions of this run
        self.cpu_elapsed = 0.0

    # -- one iteration --------------------------------------------------------------------------
    def local_chunks(self, x: torch.Tensor, y: torch.Tensor):
        """This rank's share of the global batch: chunks ``rank*m .. rank*m + m - 1`` of ``world*m``."""
        m, group = self.config.micro_batches, self.group
        xs, ys = x.chunk(group.world * m), y.chunk(group.world * m)
        return list(zip(xs, ys))[group.rank * m:(group.rank + 1) * m], group.world * m

    def arch_step(self) -> float:
        """``strategy.arch_samples`` architectures (ASNG ranks two), each evaluated on the same batch and told."""
        strategy = self.strategy
        strategy.set_schedule(cosine(self.epoch_in_search() / max(1, self.config.epochs - self.config.warmup_epochs)),
                              self.arch_steps / max(1, self.search_steps))
        x, y = next(self.val_stream if strategy.arch_batch == "val" else self.train_stream)
        chunks, total = self.local_chunks(x, y)
        values = []
        for _ in range(strategy.arch_samples):
            sample = strategy.ask("arch")
            loss_sum = torch.zeros((), device=self.device)
            gate_grad = torch.zeros_like(sample.gates) if strategy.needs_gate_grad else None
            for xc, yc in chunks:
                if strategy.needs_gate_grad:
                    gates = sample.gates.detach().clone().requires_grad_()
                    out = self.model(xc, gates, sample.active, sample.unit, sample.inactive_grad)
                    loss = F.cross_entropy(out, yc) / total
                    # autograd.grad computes only what the gates need: no weight gradients are accumulated
                    gate_grad += torch.autograd.grad(loss, gates)[0]
                else:
                    with torch.no_grad():
                        loss = F.cross_entropy(self.model(xc, sample.gates, sample.active), yc) / total
                loss_sum += loss.detach()
            self.group.sum_([loss_sum] if gate_grad is None else [loss_sum, gate_grad])
            value = self.checked(loss_sum)
            strategy.tell(sample, value, gate_grad, "arch")
            if self.best_sampled is None or value < self.best_sampled[0]:
                self.best_sampled = (value, sample.arch)
            values.append(value)
        self.arch_steps += 1
        return float(np.mean(values))

    def weight_step(self, phase: str) -> float:
        """One SGD step on the mean loss of ``strategy.weight_samples`` architectures on one batch."""
        lr = self.config.w_lr * cosine(self.step // self.steps_per_epoch / self.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = next(self.train_stream)
        chunks, total = self.local_chunks(x, y)
        n = self.strategy.weight_samples
        self.optimizer.zero_grad(set_to_none=True)
        samples, losses = [], []
        for _ in range(n):
            sample = self.strategy.ask(phase)
            # Sparse samples run their active ops unscaled: the same forward value, and nothing needs dL/dgate.
            gates = None if sample.active is not None else sample.gates.detach()
            loss_sum = torch.zeros((), device=self.device)
            for xc, yc in chunks:
                loss = F.cross_entropy(self.model(xc, gates, sample.active), yc) / (total * n)
                loss.backward()
                loss_sum += loss.detach()
            samples.append(sample)
            losses.append(loss_sum * n)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        self.group.sum_(losses + grads)
        values = [self.checked(loss) for loss in losses]
        with torch.no_grad():
            torch._foreach_add_(grads, params, alpha=self.config.w_weight_decay)
        torch.nn.utils.clip_grad_norm_(params, self.config.w_grad_clip)
        self.optimizer.step()
        for sample, value in zip(samples, values):
            self.strategy.tell(sample, value, None, phase)
        return float(np.mean(values))

    def checked(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise UserError(f"the loss became {value} at iteration {self.step}; lower the learning rates "
                            "(--set w_lr=... a_lr=...) and resume from the last good checkpoint with --resume")
        return value

    def epoch_in_search(self) -> int:
        return self.step // self.steps_per_epoch - self.config.warmup_epochs

    def in_search_phase(self) -> bool:
        return self.step >= self.config.warmup_epochs * self.steps_per_epoch

    # -- derivation -----------------------------------------------------------------------------
    def validation_accuracy(self, arch: tuple, batches: int) -> float:
        x, y = self.val_data
        x, y = x[:batches * 256], y[:batches * 256]  # only these go to the device, once per candidate
        correct = total = 0
        with batch_statistics(self.model):
            for xb, yb in eval_batches(x, y, 256, self.device):
                correct += (self.model(xb, None, [[k] for k in arch]).argmax(1) == yb).sum().item()
                total += len(yb)
        return correct / max(1, total)

    def derive(self) -> tuple:
        k = self.strategy.derive_by_validation
        if not k:
            return self.strategy.derive()
        generator = torch.Generator().manual_seed(self.config.seed + 12345)
        candidates = list(dict.fromkeys(self.space.sample(generator) for _ in range(k)))
        scores = [self.validation_accuracy(a, self.config.eval_batches) for a in candidates]
        return candidates[int(np.argmax(scores))]

    # -- checkpoint -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "arch_steps": self.arch_steps, "elapsed": self.elapsed,
            "pending_losses": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.pending_losses.items()},
            "cpu_elapsed": self.cpu_elapsed,
            "best_sampled": None if self.best_sampled is None else [self.best_sampled[0], list(self.best_sampled[1])],
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "train_stream": self.train_stream.state_dict(), "val_stream": self.val_stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": torch.from_numpy(np.append(np.random.get_state()[1], np.random.get_state()[2]).astype(np.int64)),
            "python_rng": torch.tensor(random.getstate()[1], dtype=torch.int64),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.arch_steps = state["step"], state["arch_steps"]
        self.elapsed, self.cpu_elapsed = state["elapsed"], state["cpu_elapsed"]
        self.pending_losses = {k: v.tolist() for k, v in state["pending_losses"].items()}
        bs = state["best_sampled"]
        self.best_sampled = None if bs is None else (bs[0], tuple(bs[1]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.val_stream.load_state_dict(state["val_stream"])
        torch.set_rng_state(state["torch_rng"])
        keys = state["numpy_rng"].numpy()
        np.random.set_state(("MT19937", keys[:-1].astype(np.uint32), int(keys[-1]), 0, 0.0))
        random.setstate((3, tuple(int(v) for v in state["python_rng"].tolist()), None))

    # -- the loop -------------------------------------------------------------------------------
    def run(self, folder: RunFolder, progress: bool = True, stop_after: int | None = None) -> dict | None:
        """Train to the end (or ``stop_after`` iterations, for tests of resume) and write the result."""
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.group.is_main), unit="it",
                   desc=f"{config.strategy} on {config.space}", dynamic_ncols=True)
        losses = self.pending_losses
        start, cpu_start = time.perf_counter(), time.process_time()
        while self.step < self.total_steps:
            if stop_after is not None and self.step >= stop_after:
                return None
            if self.in_search_phase() and self.strategy.updates_theta:
                losses["arch"].append(self.arch_step())
            losses["weight"].append(self.weight_step("weight" if self.in_search_phase() else "warmup"))
            self.step += 1
            crash_point("step")
            bar.update()
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                record = self.log_record(losses, self.elapsed + time.perf_counter() - start)
                folder.log(record)
                losses = self.pending_losses = {"weight": [], "arch": []}
                bar.set_postfix(loss=f"{record['weight_loss']:.3f}", acc=record.get("nb201_cifar10", "-"))
            if self.step % config.checkpoint_every == 0 or self.step % self.steps_per_epoch == 0:
                self.elapsed += time.perf_counter() - start
                self.cpu_elapsed += time.process_time() - cpu_start
                start, cpu_start = time.perf_counter(), time.process_time()
                folder.save_checkpoint(self.state_dict())
        bar.close()
        self.elapsed += time.perf_counter() - start
        self.cpu_elapsed += time.process_time() - cpu_start
        return self.finish(folder)

    def log_record(self, losses: dict, seconds: float) -> dict:
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "arch_steps": self.arch_steps,
                  "seconds": round(seconds, 3), "weight_loss": float(np.mean(losses["weight"]))}
        if losses["arch"]:
            record["arch_loss"] = float(np.mean(losses["arch"]))
        if self.strategy.updates_theta:
            arch = self.strategy.derive()
            record["architecture"] = self.space.to_string(arch)
            record.update({f"nb201_{k}": v for k, v in self.benchmark(arch).items() if k in ("cifar10", "cifar10_rank")})
            probs = self.strategy.probabilities()
            if probs is not None:
                record["entropy"] = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
        return record

    def benchmark(self, arch) -> dict:
        lookup = getattr(self.space, "benchmark", None)
        return lookup(arch) if lookup else {}

    def finish(self, folder: RunFolder) -> dict:
        t0 = time.perf_counter()
        arch = self.derive()
        derive_seconds = time.perf_counter() - t0
        result = {
            "space": self.config.space, "strategy": self.config.strategy, "seed": self.config.seed,
            "architecture": self.space.to_string(arch), "nb201": self.benchmark(arch),
            "search_seconds": round(self.elapsed + derive_seconds, 2),
            "cpu_seconds": round(self.cpu_elapsed, 2), "iterations": self.step, "arch_steps": self.arch_steps,
            "device": str(self.device),
        }
        if self.best_sampled is not None:
            pb = self.best_sampled[1]
            result["best_sampled"] = {"architecture": self.space.to_string(pb), "val_loss": self.best_sampled[0],
                                      "nb201": self.benchmark(pb)}
        if self.strategy.updates_theta:
            result["theta"] = self.strategy.theta.detach().cpu().tolist()
        folder.write_result(result)
        return result
