"""The one search loop: warm-up, then an architecture step before every weight step (or, for single-level
strategies, weights and θ from one backward on the same batch).

The trainer reads a strategy's declared pattern (``arch_batch``, ``needs_gate_grad``, ``updates_theta``,
``derive_by_validation``) and never asks which strategy it runs; it asks the task for batches and the loss and
never names a dataset. A run folder holds ``config.json``,
``log.jsonl``, ``checkpoint.pt``, ``result.json`` and ``search.png``; ``resume=True`` continues from the
checkpoint and, on a CPU with the same seed, ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import sys
import time

import numpy as np
import torch

from . import strategies, unrolled
from .config import SearchConfig
from .distributed import Group
from .errors import UserError
from .runs import RunFolder, crash_point
from .supernet import use_channels_last
from .spaces import create_space
from .tasks import Task, as_task


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


def network_options(config: SearchConfig, task: Task) -> dict:
    """What the space's ``build_supernet`` is given: the network settings and the task's shapes."""
    return dict(channels=config.channels, cells_per_stage=config.cells_per_stage, op_style=config.op_style,
                op_bn_affine=config.op_bn_affine, input_shape=task.input_shape, num_outputs=task.num_outputs,
                **config.network_options)


def versions() -> dict:
    """Package, git commit (when run from a checkout) and torch versions, for result.json."""
    import subprocess
    from pathlib import Path

    from . import __version__

    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"oneshot": __version__, "commit": commit, "torch": torch.__version__}


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

    def __init__(self, config: SearchConfig, task, device: torch.device, group: Group = Group(),
                 space=None):
        """``task``: a ``Task`` (or CIFAR-shaped ``data.Cifar10`` tensors); ``space``: a SearchSpace object to
        search instead of ``config.space`` by name (a user's own space)."""
        self.config, self.device, self.group = config, device, group
        self.task: Task = as_task(task)
        check_batch_split(config, group.world)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.space = space if space is not None else create_space(config.space, **config.space_options)
        if config.restrict:
            self.space = self.space.restrict(config.restrict)
        try:
            self.model = self.space.build_supernet(**network_options(config, self.task)).to(device)
        except TypeError as e:  # an option this space's network does not take
            raise UserError(f"space {self.space.name!r} cannot build its network with these settings ({e}); "
                            "check --set network_options=...") from None
        if config.channels_last:
            use_channels_last(self.model)
        self.strategy = strategies.create(config.strategy, self.space, seed=config.seed, device=device,
                                          **{"lr": config.a_lr, **config.strategy_options})
        self.train_stream, self.val_stream = self.task.search_streams(
            config.batch_size, device, config.seed, n_weight=config.n_weight, n_arch=config.n_arch,
            augment=config.augment, cutout=config.cutout)
        if self.val_stream is None and (self.strategy.arch_batch == "val" or self.strategy.derive_by_validation):
            raise UserError(f"strategy {config.strategy!r} needs validation data; set n_arch above 0 (--set n_arch=N)")
        # A supernet without trainable weights (the AdvantageNAS toy) gets architecture steps only, no optimiser.
        self.trains_weights = any(p.requires_grad for p in self.model.parameters())
        # arch_gradient "unrolled": dL_val/dgate at a virtual weight step (DARTS second order, oneshot.unrolled);
        # without weights there is no inner step and it is the direct gradient
        arch_gradient = self.strategy.arch_gradient
        unrolled.check_applicable(self.strategy, arch_gradient, group.world)
        self.unrolled = arch_gradient == "unrolled" and self.trains_weights
        self.next_train_batch = None  # the batch an unrolled arch step drew for the weight step that follows
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.w_lr, momentum=config.w_momentum,
                                         nesterov=config.w_nesterov) if self.trains_weights else None
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
    def local_chunks(self, batch: tuple) -> tuple[list[tuple], int]:
        """This rank's share of the global batch: chunks ``rank*m .. rank*m + m - 1`` of ``world*m``."""
        m, group = self.config.micro_batches, self.group
        chunks = self.task.split(batch, group.world * m)
        return chunks[group.rank * m:(group.rank + 1) * m], group.world * m

    def forward(self, sample, gates):
        """The supernet with this sample's gates bound: what ``task.loss`` calls."""
        return functools.partial(self.model, gates=gates, active=sample.active, unit_gates=sample.unit,
                                 inactive_grad=sample.inactive_grad)

    def sample_loss(self, sample, gates, chunk, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(task loss, objective) of ``chunk``, each divided by ``parts``; the objective adds the strategy's own
        term when the gates carry a gradient (which is how that term reaches dL/dgate)."""
        loss = self.task.loss(self.forward(sample, gates), chunk) / parts
        if gates is not None and gates.requires_grad:
            term = self.strategy.loss_term(sample, gates)
            if term is not None:
                return loss, loss + term / parts
        return loss, loss

    def set_schedule(self) -> None:
        config = self.config
        self.strategy.set_schedule(cosine(self.epoch_in_search() / max(1, config.epochs - config.warmup_epochs)),
                                   self.arch_steps / max(1, self.search_steps))

    def weight_lr(self) -> float:
        """This iteration's weight learning rate: cosine per integer epoch."""
        config = self.config
        return config.w_lr_min + (config.w_lr - config.w_lr_min) * cosine(
            self.step // self.steps_per_epoch / (config.w_cosine_epochs or config.epochs))

    def arch_step(self) -> float:
        """The strategy's samples, each evaluated on the same batch, told together."""
        strategy = self.strategy
        self.set_schedule()
        batch = next(self.val_stream if strategy.arch_batch == "val" else self.train_stream)
        chunks, total = self.local_chunks(batch)
        if self.unrolled:  # the virtual step trains on the batch of the weight step that follows, as DARTS does
            self.next_train_batch = next(self.train_stream)
            train_chunks, _ = self.local_chunks(self.next_train_batch)
        samples = strategy.ask("arch")
        values, gate_grads = [], []
        for sample in samples:
            if self.unrolled:
                gate_grad, loss_sum = self.unrolled_gate_gradient(sample, train_chunks, chunks, total)
                values.append(self.checked(loss_sum))
                gate_grads.append(gate_grad)
                continue
            loss_sum = torch.zeros((), device=self.device)
            gate_grad = torch.zeros_like(sample.gates) if strategy.needs_gate_grad else None
            for chunk in chunks:
                if strategy.needs_gate_grad:
                    gates = sample.gates.detach().clone().requires_grad_()
                    loss, objective = self.sample_loss(sample, gates, chunk, total)
                    # autograd.grad computes only what the gates need: no weight gradients are accumulated
                    gate_grad += torch.autograd.grad(objective, gates)[0]
                else:
                    with torch.no_grad():
                        loss, _ = self.sample_loss(sample, sample.gates, chunk, total)
                loss_sum += loss.detach()
            self.group.sum_([loss_sum] if gate_grad is None else [loss_sum, gate_grad])
            values.append(self.checked(loss_sum))
            gate_grads.append(gate_grad)
        strategy.tell(samples, values, gate_grads if strategy.needs_gate_grad else None, "arch")
        self.note_sampled(samples, values)
        self.arch_steps += 1
        return float(np.mean(values))

    def unrolled_gate_gradient(self, sample, train_chunks, val_chunks, parts: int):
        """(dL_val(w', gates)/dgates, L_val(w')) at the virtual step w' of the weight step's settings."""
        config = self.config
        weights = [p for p in self.model.parameters() if p.requires_grad]
        state = self.optimizer.state  # .get: reading must not add entries to the optimiser's state
        return unrolled.unrolled_gate_gradient(
            sample.gates, weights,
            lambda gates: (self.sample_loss(sample, gates, chunk, parts)[0] for chunk in train_chunks),
            lambda gates: (self.sample_loss(sample, gates, chunk, parts) for chunk in val_chunks),
            lr=self.weight_lr(), momentum_buffers=[state.get(p, {}).get("momentum_buffer") for p in weights],
            momentum=config.w_momentum, nesterov=config.w_nesterov, weight_decay=config.w_weight_decay,
            # clipped as the weight step is, unless the strategy declares an unclipped virtual step
            max_norm=config.w_grad_clip if getattr(self.strategy, "unrolled_clip", True) else math.inf,
            buffers=list(self.model.buffers()))

    def note_sampled(self, samples, values) -> None:
        for sample, value in zip(samples, values):
            if self.best_sampled is None or value < self.best_sampled[0]:
                self.best_sampled = (value, sample.arch)

    def weight_step(self, phase: str) -> tuple[float, float | None]:
        """One SGD step on the mean loss of the strategy's samples on one batch. A single-level strategy
        (``arch_batch == "same"``) in the search phase gets dL/dgate from the same backward and is told as an
        arch step; returns (weight loss, arch loss or None)."""
        strategy = self.strategy
        config = self.config
        lr = self.weight_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        single_level = phase == "weight" and strategy.arch_batch == "same" and strategy.updates_theta
        if single_level:
            self.set_schedule()
        batch = self.next_train_batch if self.next_train_batch is not None else next(self.train_stream)
        self.next_train_batch = None
        chunks, total = self.local_chunks(batch)
        # zeros instead of None (torch < 2.0's default, as ABS's code ran): an op that has run once keeps getting
        # weight decay and momentum in the steps that do not sample it
        self.optimizer.zero_grad(set_to_none=not self.config.w_keep_zero_grads)
        samples = strategy.ask(phase)
        n = len(samples)
        losses, gate_grads = [], []
        for sample in samples:
            if single_level:
                gates = sample.gates.detach().clone().requires_grad_()
            else:
                # Sparse samples run their active ops unscaled: the same forward value, and no dL/dgate needed.
                gates = None if sample.active is not None else sample.gates.detach()
            loss_sum = torch.zeros((), device=self.device)
            for chunk in chunks:
                loss, objective = self.sample_loss(sample, gates, chunk, total * n)
                # across ranks, the step's last backward sums the weight gradients while it runs
                self.group.backward(objective, self.model, last=sample is samples[-1] and chunk is chunks[-1])
                loss_sum += loss.detach()
            losses.append(loss_sum * n)
            if single_level:
                gate_grads.append(gates.grad * n)  # dL/dgate of this sample's own mean loss
        self.group.sum_gradients_(self.model)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        self.group.sum_(losses + gate_grads)
        values = [self.checked(loss) for loss in losses]
        with torch.no_grad():
            torch._foreach_add_(grads, params, alpha=self.config.w_weight_decay)
        torch.nn.utils.clip_grad_norm_(params, self.config.w_grad_clip)
        self.optimizer.step()
        if single_level:
            strategy.tell(samples, values, gate_grads, "arch")
            self.note_sampled(samples, values)
            self.arch_steps += 1
            return float(np.mean(values)), float(np.mean(values))
        strategy.tell(samples, values, None, phase)
        return float(np.mean(values)), None

    def checked(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            # --resume refuses changed settings, so the advice that works is a new run with lower rates
            raise UserError(f"the loss became {value} at iteration {self.step} (the last good checkpoint is kept); "
                            "start again with lower learning rates (--set w_lr=... --set a_lr=...) and --overwrite "
                            "or another --out")
        return value

    def epoch_in_search(self) -> int:
        return self.step // self.steps_per_epoch - self.config.warmup_epochs

    def in_search_phase(self) -> bool:
        return self.step >= self.config.warmup_epochs * self.steps_per_epoch

    # -- derivation -----------------------------------------------------------------------------
    def child_score(self, arch: tuple, split: str = "arch", limit: int | None = None) -> dict:
        """The task's metric of ``arch`` inside the supernet (one-hot, no retraining), with each batch's own BN
        statistics."""
        forward = functools.partial(self.model, gates=None, active=[[k] for k in arch])
        with batch_statistics(self.model):
            return self.task.evaluate(forward, split, self.device, limit=limit)

    def without_retraining(self, arch: tuple) -> dict:
        """The derived child inside the converged supernet (one op per decision, no retraining) beside the
        supernet as the strategy trains it (its weight-step gates: softmax for DARTS, a relaxed sample for SNAS),
        both on the task's test split: SNAS's claim is that the two agree, and that DARTS's child collapses."""
        (sample,) = self.strategy.ask("weight")[:1]
        gates = None if sample.active is not None else sample.gates
        limit = self.config.eval_limit or None
        with batch_statistics(self.model):
            supernet = self.task.evaluate(self.forward(sample, gates), "test", self.device, limit=limit)
        metric = self.task.metric
        return {"split": "test", "examples": limit or "all", "metric": metric,
                "child": self.child_score(arch, "test", limit)[metric], "supernet": supernet[metric]}

    def derivation(self) -> str:
        """Which rule gives the result: "best_sampled" or "derive" (the strategy's own), from ``config.derive``."""
        rule = self.config.derive
        if rule == "paper":
            rule = self.strategy.paper_derivation
        return "best_sampled" if rule == "best_sampled" and self.best_sampled is not None else "derive"

    def derive(self) -> tuple:
        if self.derivation() == "best_sampled":
            return self.best_sampled[1]
        k = self.strategy.derive_by_validation
        if not k:
            return self.strategy.derive()
        generator = torch.Generator().manual_seed(self.config.seed + 12345)
        candidates = list(dict.fromkeys(self.space.sample(generator) for _ in range(k)))
        sign = 1 if self.task.higher_is_better else -1
        scores = [sign * self.child_score(a, limit=self.config.eval_batches * 256)[self.task.metric]
                  for a in candidates]
        return candidates[int(np.argmax(scores))]

    # -- checkpoint -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "arch_steps": self.arch_steps, "elapsed": self.elapsed,
            "pending_losses": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.pending_losses.items()},
            "cpu_elapsed": self.cpu_elapsed,
            "best_sampled": None if self.best_sampled is None else [self.best_sampled[0], list(self.best_sampled[1])],
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "strategy": self.strategy.state_dict(), "task": self.task.state_dict(),
            "train_stream": self.train_stream.state_dict(),
            "val_stream": None if self.val_stream is None else self.val_stream.state_dict(),
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
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.task.load_state_dict(state.get("task", {}))
        self.train_stream.load_state_dict(state["train_stream"])
        if self.val_stream is not None:
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
        if self.task.protocol_note and self.group.is_main:  # also with --quiet: no number may be mistaken
            tqdm.write(f"note: {self.task.protocol_note}", file=sys.stderr)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.group.is_main), unit="it",
                   desc=f"{config.strategy} on {config.space}", dynamic_ncols=True)
        losses = self.pending_losses
        start, cpu_start = time.perf_counter(), time.process_time()
        while self.step < self.total_steps:
            if stop_after is not None and self.step >= stop_after:
                return None
            searching = self.in_search_phase()
            if searching and self.strategy.updates_theta and (self.strategy.arch_batch != "same"
                                                               or not self.trains_weights):
                losses["arch"].append(self.arch_step())
            if self.trains_weights:
                weight_loss, arch_loss = self.weight_step("weight" if searching else "warmup")
                losses["weight"].append(weight_loss)
                if arch_loss is not None:
                    losses["arch"].append(arch_loss)
            self.step += 1
            crash_point("step")
            bar.update()
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                record = self.log_record(losses, self.elapsed + time.perf_counter() - start)
                folder.log(record)
                losses = self.pending_losses = {"weight": [], "arch": []}
                postfix = {"loss": f"{record.get('weight_loss', record.get('arch_loss', math.nan)):.3f}"}
                if "nb201_cifar10" in record:  # the table's accuracy of the current argmax cell
                    postfix["argmax_nb201"] = record["nb201_cifar10"]
                bar.set_postfix(postfix)
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
                  "seconds": round(seconds, 3)}
        if losses["weight"]:
            record["weight_loss"] = float(np.mean(losses["weight"]))
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
        """The tabular benchmark's numbers where they apply (NB201 on CIFAR-10), else {}."""
        where = self.task.benchmark
        lookup = getattr(self.space, "benchmark", None)
        return lookup(arch) if lookup and where and where[0] == self.space.name else {}

    def finish(self, folder: RunFolder) -> dict:
        t0 = time.perf_counter()
        arch = self.derive()
        derive_seconds = time.perf_counter() - t0
        result = {
            "space": self.config.space, "strategy": self.config.strategy, "seed": self.config.seed,
            "architecture": self.space.to_string(arch), "derivation": self.derivation(),
            "nb201": self.benchmark(arch), "search_seconds": round(self.elapsed + derive_seconds, 2),
            "cpu_seconds": round(self.cpu_elapsed, 2), "iterations": self.step, "arch_steps": self.arch_steps,
            "device": str(self.device), "task": self.task.describe(), "versions": versions(),
        }
        if self.best_sampled is not None:
            pb = self.best_sampled[1]
            result["best_sampled"] = {"architecture": self.space.to_string(pb), "val_loss": self.best_sampled[0],
                                      "nb201": self.benchmark(pb)}
        if self.strategy.updates_theta:
            result["theta"] = self.strategy.theta.detach().cpu().tolist()
        if self.config.eval_child:
            result["without_retraining"] = self.without_retraining(arch)
        folder.write_result(result)
        return result
