"""Training a child from scratch and testing it: the one retraining loop of every space and task.

``train(space, arch, task, config, device)`` builds ``space.build_child(arch, input_shape=task.input_shape,
num_outputs=task.num_outputs, **network settings)``, trains it on ``task.train_stream`` with ``task.loss`` and
reports ``task.evaluate`` on "test" (and first on "valid" where the task has one: PTB, at its batch 1). SGD
(momentum, optionally Nesterov) or Adam (β 0.9/0.999), with coupled weight decay on every parameter; a learning
rate set per integer epoch, either a cosine (to 0) or a step schedule (× 0.1 from 40 % and again from 80 % of
the epochs, as ASNG-NAS's inpainting retraining); optional global-norm clipping; on a child with a ``drop_path``
attribute, drop-path ramped linearly as ``drop_path * epoch / epochs``. A checkpoint after every epoch in the run
folder; ``--resume`` continues from it and, on a CPU, ends exactly where an uninterrupted run ends.

Auxiliary heads: a child that has an ``auxiliary`` attribute (ENAS micro, DARTS) follows the DARTS convention,
``forward(x) -> (logits, aux_logits)`` with ``aux_logits`` None in eval mode or without a head. The loop hands the
task ``logits`` only and adds ``aux_weight`` x the task's loss of ``aux_logits`` (``task.loss`` of a forward that
returns that fixed tensor). Any other child's output goes to the task as it is, so a PTB child's
``(logits, hidden)`` is the task's business, never mistaken for an auxiliary head. The head is built only when
``aux_weight > 0`` and never counts in ``parameters``.

Presets (``paper``: the published protocol, for a GPU; ``cpu``: a reduction for 2 CPU cores; ``smoke``: seconds,
proves the plumbing). The cpu times are CPU seconds of ONE core (torch on one thread), measured on this project's
2-core machine; two idle cores are about 1.6x faster on the convolutional spaces.

- nb201: NB201's own training (AutoDL-Projects ``configs/nas-benchmark/hyper-opts/200E.config``): TinyNetwork
  C=16, N=5 (``op_style="nb201"``, affine BN), 200 epochs, batch 256, Nesterov SGD momentum 0.9, lr 0.1 cosine,
  wd 5e-4, no clipping, crop + flip, no cutout. cpu: C=16, N=1, 10k images, 10 epochs, batch 128: 21 s per
  epoch, 4 minutes with the test.
- enas_micro: ASNG-NAS (spec asng.md §3): 20 cells at the widest C with at most 4.0 M parameters
  (``channels=0``), 600 epochs, batch 80, SGD momentum 0.9 lr 0.025, wd 3e-4, clip 5, cutout 16, aux 0.4,
  drop-path to 0.3. cpu (as before this loop existed): 8 cells at C=16, 10k images, 10 epochs, batch 64: 183 s
  per epoch for a random cell on one core; the cell of results/enas-cpu took 20 minutes in all on two cores.
- darts: SNAS / DARTS evaluation (spec snas.md §4): 20 cells, C=36, batch 96, 600 epochs, SGD momentum 0.9
  lr 0.025 cosine, wd 3e-4, clip 5, cutout 16, aux 0.4, drop-path to 0.2, pools with BN. cpu: 8 cells at C=16,
  10k images, 8 epochs, batch 64: 180 s per epoch (SNAS moderate), 25 minutes with the test on one core.
- rnn: AdvantageNAS PTB retraining (spec advantagenas.md §3, official ``ptb/custom.py``): hidden = embedding =
  300, dropout 0.5/0.5, 100 epochs, batch 256, BPTT 35, plain SGD lr 20 cosine, clip 0.25, no weight decay;
  valid and test perplexity at batch 1 from a reset state. cpu: the same network, batch 32, 15 epochs, on the PTB
  fallback data (``fallback=true``: 90 % of ptb.valid.txt trains; the note goes into result.json): 27 s per
  epoch, 7 minutes with valid and test.
- inpainting: ASNG-NAS's CAE retraining (spec asng.md §3, official ``main_inpainting_*.py``): 500k iterations,
  batch 16, Adam lr 1e-3 with the step schedule, clip 5, no weight decay. The inpainting task's stream has no
  epochs, so the presets set its ``steps_per_epoch`` (the unit of checkpoints): paper 500 epochs of 1,000 steps;
  cpu 20 of 100 (2,000 iterations: 75 s for the hand-designed CAE at channel scale 1/8, one core of this machine
  while the other jobs kept the load near 4; testing on 1,000 images takes 8 s more);
  smoke 2 of 10. (experiments/inpainting.py builds its task with one step per epoch and sets ``epochs`` to its
  iteration budget.)
- any other space: nb201's training settings, and ``child_options`` for its ``build_child``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import coerce
from .errors import UserError
from .runs import RunFolder, atomic_write, crash_point
from .supernet import use_channels_last


@dataclass
class RetrainConfig:
    space: str = ""               # whose presets these are (recorded; the loop reads the space object)
    preset: str = ""
    # the network: each space reads the settings NETWORK_SETTINGS lists for it
    channels: int = 16            # nb201, enas_micro (0: the widest under max_params), darts
    cells: int = 20               # enas_micro, darts: cells in the network, two of them reductions
    cells_per_stage: int = 5      # nb201
    op_style: str = "nb201"       # nb201: "nb201" (NB201's TinyNetwork) or "advantage"
    max_params: float = 4.0e6     # enas_micro with channels=0
    pool_bn: bool = True          # darts: BN after the pools (SNAS; DARTS's own evaluation has none)
    hidden: int = 300             # rnn
    embedding: int = 0            # rnn: 0 = hidden
    dropout_input: float = 0.5    # rnn
    dropout_output: float = 0.5   # rnn
    child_options: dict = field(default_factory=dict)  # more build_child options (a space of your own)
    channels_last: bool = False   # NHWC weights and images (supernet.use_channels_last; darts presets: faster)
    # data
    task_options: dict = field(default_factory=dict)   # added to the task's options (rnn cpu: fallback)
    n_train: int = 0              # training examples (images: the first of a fixed shuffle); 0 = all
    augment: bool = True          # crop + flip (images)
    cutout: int = 0               # side of the cut-out square; 0 = none
    # optimisation
    epochs: int = 200
    batch_size: int = 256
    optimizer: str = "sgd"        # "sgd" or "adam" (β 0.9/0.999)
    schedule: str = "cosine"      # "cosine" (to 0) or "step" (× 0.1 at 40 % and 80 % of the epochs)
    lr: float = 0.1
    momentum: float = 0.9         # sgd
    nesterov: bool = False        # sgd
    weight_decay: float = 5e-4
    grad_clip: float = 0.0        # global norm; 0 = no clipping
    aux_weight: float = 0.0       # enas_micro, darts
    drop_path: float = 0.0        # enas_micro, darts: the ramp's final probability
    eval_batch_size: int = 0      # 0 = the task's own (images 256, PTB 1)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RetrainConfig":
        """A copy with ``changes``, each coerced to its setting's type (strings from the command line too)."""
        types = typing.get_type_hints(RetrainConfig)
        unknown = sorted(set(changes) - set(types))
        if unknown:
            raise UserError(f"unknown retraining setting(s) {unknown}; valid: {', '.join(types)}")
        return dataclasses.replace(self, **{k: coerce(k, v, types[k]) for k, v in changes.items()})

    def validated(self) -> "RetrainConfig":
        """This configuration if every value is in range, else one UserError naming the setting."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(f"retraining: {message}; change it with --set")

        for name in ("epochs", "batch_size", "cells", "cells_per_stage", "hidden"):
            need(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("channels", "embedding", "n_train", "cutout", "eval_batch_size"):
            need(getattr(self, name) >= 0, f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "max_params"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive finite number, got {value}")
        for name in ("weight_decay", "grad_clip", "aux_weight"):
            value = getattr(self, name)
            need(math.isfinite(value) and value >= 0, f"{name} must be finite and not negative, got {value}")
        for name in ("momentum", "drop_path", "dropout_input", "dropout_output"):
            need(0 <= getattr(self, name) < 1, f"{name} must lie in [0, 1), got {getattr(self, name)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule must be {' or '.join(SCHEDULES)}, got {self.schedule!r}")
        need(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
             "nesterov needs optimizer=sgd and momentum > 0")
        need(self.op_style in ("nb201", "advantage"), f"op_style must be nb201 or advantage, got {self.op_style!r}")
        return self


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step")
# The step schedule: the learning rate is multiplied by STEP_GAMMA from each of these fractions of the epochs on.
STEP_MILESTONES, STEP_GAMMA = (0.4, 0.8), 0.1

# Settings that only some spaces read; a space of your own reads child_options.
NETWORK_SETTINGS = {
    "nb201": ("channels", "cells_per_stage", "op_style"),
    "enas_micro": ("channels", "cells", "max_params"),
    "darts": ("channels", "cells", "pool_bn"),
    "rnn": ("hidden", "embedding", "dropout_input", "dropout_output"),
    "inpainting": (),  # the space's own options (encoding, layers, channel_scale) fix the network
}
HEADED = ("aux_weight", "drop_path")        # children with an auxiliary head and drop-path
IMAGE_DATA = ("n_train", "augment", "cutout")
APPLIES = {"nb201": IMAGE_DATA, "enas_micro": IMAGE_DATA + HEADED, "darts": IMAGE_DATA + HEADED, "rnn": (),
           "inpainting": ()}
SPACE_SPECIFIC = {s for names in NETWORK_SETTINGS.values() for s in names} | set(HEADED) | set(IMAGE_DATA)

_NB201_TRAINING = dict(epochs=200, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                       grad_clip=0.0, cutout=0, aux_weight=0.0, drop_path=0.0)
_NB201 = dict(_NB201_TRAINING, channels=16, cells_per_stage=5, op_style="nb201")
_ENAS = dict(channels=0, max_params=4.0e6, cells=20, epochs=600, batch_size=80, n_train=0, lr=0.025,
             momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, cutout=16, aux_weight=0.4,
             drop_path=0.3)
_DARTS = dict(channels=36, cells=20, pool_bn=True, channels_last=True, epochs=600, batch_size=96, n_train=0,
              lr=0.025, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, cutout=16, aux_weight=0.4, drop_path=0.2)
_RNN = dict(hidden=300, embedding=300, dropout_input=0.5, dropout_output=0.5, epochs=100, batch_size=256, lr=20.0,
            momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=0.25, augment=False, cutout=0)
_INPAINTING = dict(epochs=500, batch_size=16, optimizer="adam", schedule="step", lr=1e-3, weight_decay=0.0,
                   grad_clip=5.0, augment=False, cutout=0, task_options={"steps_per_epoch": 1000})
_GENERIC = {"paper": _NB201_TRAINING, "cpu": dict(_NB201_TRAINING, epochs=10, batch_size=128, n_train=10_000),
            "smoke": dict(_NB201_TRAINING, epochs=1, batch_size=32, n_train=256)}
RETRAIN_PRESETS: dict[str, dict[str, dict]] = {
    "nb201": {"paper": _NB201,
              "cpu": dict(_NB201, cells_per_stage=1, epochs=10, batch_size=128, n_train=10_000),
              "smoke": dict(_NB201, channels=4, cells_per_stage=1, epochs=1, batch_size=32, n_train=256)},
    "enas_micro": {"paper": _ENAS,
                   "cpu": dict(_ENAS, cells=8, channels=16, epochs=10, batch_size=64, n_train=10_000),
                   "smoke": dict(_ENAS, cells=3, channels=4, epochs=1, batch_size=32, n_train=256)},
    "darts": {"paper": _DARTS,
              "cpu": dict(_DARTS, cells=8, channels=16, epochs=8, batch_size=64, n_train=10_000),
              "smoke": dict(_DARTS, cells=3, channels=4, epochs=1, batch_size=32, n_train=256)},
    "rnn": {"paper": _RNN,
            "cpu": dict(_RNN, epochs=15, batch_size=32, task_options={"fallback": True}),
            "smoke": dict(_RNN, hidden=16, embedding=16, epochs=1, batch_size=64, task_options={"fallback": True})},
    "inpainting": {"paper": _INPAINTING,
                   "cpu": dict(_INPAINTING, epochs=20, task_options={"steps_per_epoch": 100}),
                   "smoke": dict(_INPAINTING, epochs=2, task_options={"steps_per_epoch": 10})},
}


def retrain_preset(name: str, space: str = "enas_micro", **changes) -> RetrainConfig:
    """The preset ``name`` for ``space`` with ``changes``; a change that the space does not read is refused."""
    presets = RETRAIN_PRESETS.get(space, _GENERIC)
    if name not in presets:
        raise UserError(f"unknown retraining preset {name!r}; choose from {', '.join(presets)}")
    if space in NETWORK_SETTINGS:
        foreign = sorted(k for k in changes if k in SPACE_SPECIFIC
                         and k not in NETWORK_SETTINGS[space] + APPLIES[space])
        if foreign:
            raise UserError(f"retraining setting(s) {', '.join(foreign)} do not apply to space {space}; its own are "
                            f"{', '.join(NETWORK_SETTINGS[space] + APPLIES[space]) or 'none'}")
    else:
        foreign = sorted(k for k in changes if k in {s for names in NETWORK_SETTINGS.values() for s in names})
        if foreign:
            raise UserError(f"retraining setting(s) {', '.join(foreign)} belong to the built-in spaces; give a space "
                            f"of your own its network options with --set child_options='{{...}}'")
    return RetrainConfig().replace(**presets[name]).replace(space=space, preset=name, **changes)


# --- the child --------------------------------------------------------------------------------------------
def network_options(space, arch, task, config: RetrainConfig) -> dict:
    """The ``build_child`` options of ``config`` for ``space`` (``channels=0``: the widest under max_params)."""
    options = {name: getattr(config, name) for name in NETWORK_SETTINGS.get(space.name, ())}
    if space.name in NETWORK_SETTINGS:
        options.pop("max_params", None)
        if "embedding" in options:
            options["embedding"] = options["embedding"] or None
        if space.name in ("enas_micro", "darts"):
            options["auxiliary"] = config.aux_weight > 0
    if options.get("channels") == 0:
        if not hasattr(space, "channels_for_budget"):
            raise UserError(f"channels=0 (the widest network under max_params) needs a space with a parameter "
                            f"budget search (enas_micro), not {space.name}; set channels")
        options["channels"] = space.channels_for_budget(arch, config.max_params, config.cells, task.num_outputs)
    return {**options, **config.child_options}


def build_child(space, arch, task, options: dict) -> nn.Module:
    """``space.build_child(arch, input_shape=..., num_outputs=..., **options)``; an unknown option is one line."""
    build = space.build_child
    params = inspect.signature(build).parameters
    shapes = {"input_shape": tuple(task.input_shape), "num_outputs": task.num_outputs}
    if "input_shape" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        shapes = {"num_classes": task.num_outputs}  # a space that predates the task interface (enas_micro)
    try:
        inspect.signature(build).bind(arch, **shapes, **options)
    except TypeError as e:
        raise UserError(f"space {space.name!r}: build_child does not take these options ({e}); "
                        "change --set child_options") from None
    return build(arch, **shapes, **options)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network, without those of its auxiliary head (used only in training)."""
    head = getattr(model, "auxiliary", None)
    skip = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def count_flops(model: nn.Module, task) -> int | None:
    """Multiply-adds of one image through the network (image tasks; the DARTS space's counter)."""
    if len(task.input_shape) != 3:
        return None
    try:
        from .spaces.darts import count_flops as counter
    except ImportError:
        return None
    return int(counter(model, task.input_shape)) or None  # 0: no conv modules to count (the CAE's functional convs)


def evaluation_splits(task, device) -> list[str]:
    """The splits to report: the task's ``eval_splits`` if it declares them, else "valid" where the task has
    one and always "test" (a task without a test split is refused here, before any training)."""
    declared = getattr(task, "eval_splits", None)
    if declared is not None:
        return list(declared)
    splits = []
    for split in ("valid", "test"):
        try:
            next(iter(task.eval_batches(split, 1, device, limit=2)), None)
        except UserError:
            if split == "test":
                raise
            continue
        splits.append(split)
    return splits


# --- the loop ---------------------------------------------------------------------------------------------
def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def step_factor(progress: float) -> float:
    """The step schedule's multiplier at ``progress`` (epoch / epochs): 1, then 0.1 from 0.4, then 0.01 from 0.8."""
    return STEP_GAMMA ** sum(progress >= m for m in STEP_MILESTONES)


def lr_factor(schedule: str, progress: float) -> float:
    return cosine(progress) if schedule == "cosine" else step_factor(progress)


def make_optimizer(parameters, config: RetrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam (β 0.9/0.999, ε 1e-8), each with coupled weight decay."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


class Retraining:
    """One from-scratch training run; ``run()`` trains and tests, ``state_dict()`` is the checkpoint."""

    def __init__(self, space, arch, task, config: RetrainConfig, device: torch.device):
        self.space, self.task, self.config, self.device = space, task, config.validated(), torch.device(device)
        self.arch = space.check(arch)
        torch.manual_seed(config.seed)
        self.network = network_options(space, self.arch, task, config)
        self.model = build_child(space, self.arch, task, self.network).to(self.device)
        if config.channels_last:
            use_channels_last(self.model)
        self.headed = hasattr(self.model, "auxiliary")  # returns (logits, aux_logits): the DARTS convention
        if config.aux_weight > 0 and getattr(self.model, "auxiliary", None) is None:
            raise UserError(f"space {space.name}'s child has no auxiliary head; set aux_weight=0")
        if config.drop_path > 0 and not hasattr(self.model, "drop_path"):
            raise UserError(f"space {space.name}'s child has no drop-path; set drop_path=0")
        self.parameter_count = count_parameters(self.model)
        self.flops = count_flops(self.model, task)
        self.splits = evaluation_splits(task, self.device)
        self.stream = task.train_stream(config.batch_size, self.device, config.seed, n_train=config.n_train or None,
                                        augment=config.augment, cutout=config.cutout)
        self.optimizer = make_optimizer(self.model.parameters(), self.config)
        self.steps_per_epoch = self.stream.steps_per_epoch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.step = 0
        self.elapsed = 0.0

    def forward(self, *inputs):
        """The child as the task sees it: logits only for a headed child, anything else as it is."""
        out = self.model(*inputs)
        if not self.headed:
            return out
        logits, self._aux = out
        return logits

    def train_step(self, batch) -> float:
        self._aux = None
        loss = self.task.loss(self.forward, batch)
        aux = self._aux
        if self.config.aux_weight > 0 and aux is not None:
            loss = loss + self.config.aux_weight * self.task.loss(lambda *_: aux, batch)
        value = loss.item()
        if not math.isfinite(value):
            raise UserError(f"the retraining loss became {value} at step {self.step} (epoch "
                            f"{self.step // self.steps_per_epoch}); lower the learning rate (--set lr=...) and start "
                            "again with --overwrite")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return value

    def begin_epoch(self, epoch: int) -> dict:
        config = self.config
        lr = config.lr * lr_factor(config.schedule, epoch / config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        schedule = {"lr": lr}
        if hasattr(self.model, "drop_path"):
            self.model.drop_path = schedule["drop_path"] = config.drop_path * epoch / config.epochs
        self.model.train()
        return schedule

    def run(self, folder: RunFolder | None = None, progress: bool = True, stop_after: int | None = None) -> dict | None:
        """Train to the end (or to ``stop_after`` steps, for tests of resume), then test."""
        from tqdm.auto import tqdm

        if progress and self.task.protocol_note and self.step == 0:
            tqdm.write(f"note: {self.task.protocol_note}")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, unit="it", dynamic_ncols=True,
                   desc=f"retrain {self.space.name}")
        start = time.perf_counter()
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            schedule = self.begin_epoch(epoch)
            losses = []
            for _ in range(self.steps_per_epoch):
                if stop_after is not None and self.step >= stop_after:
                    bar.close()
                    return None
                losses.append(self.train_step(next(self.stream)))
                self.step += 1
                crash_point("step")
                bar.update()
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
            self.elapsed += time.perf_counter() - start
            start = time.perf_counter()
            if folder is not None:
                folder.log({"step": self.step, "epoch": epoch + 1, "loss": sum(losses) / len(losses), **schedule,
                            "seconds": round(self.elapsed, 2)})
                folder.save_checkpoint(self.state_dict())
        bar.close()
        self.elapsed += time.perf_counter() - start
        return self.finish()

    def evaluate(self, split: str) -> dict:
        self.model.eval()
        size = {"batch_size": self.config.eval_batch_size} if self.config.eval_batch_size else {}
        batch = self.config.eval_batch_size or getattr(self.task, "eval_batch_size", None)
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and batch == 1:
            # PTB's batch-1 steps are too small to split: a second thread only waits (9x slower on a busy 2-core box)
            torch.set_num_threads(1)
        try:
            return self.task.evaluate(self.forward, split, self.device, **size)
        finally:
            torch.set_num_threads(threads)

    def finish(self) -> dict:
        from .trainer import versions

        t0 = time.perf_counter()
        scores = {split: self.evaluate(split) for split in self.splits}
        metric = self.task.metric
        result = {"space": self.space.name, "architecture": self.space.to_string(self.arch),
                  "parameters": self.parameter_count, "flops": self.flops, "network": self.network}
        for split, score in scores.items():
            result[f"{split}_{metric}"] = score[metric]
        if metric == "accuracy" and "test" in scores:
            result["test_error_percent"] = round(100 * (1 - scores["test"]["accuracy"]), 2)
        result.update(scores=scores, channels=self.network.get("channels"), cells=self.network.get("cells"),
                      train_seconds=round(self.elapsed, 1), eval_seconds=round(time.perf_counter() - t0, 1),
                      epochs=self.config.epochs, steps=self.step, device=str(self.device),
                      task=self.task.describe(), config=self.config.to_dict(), versions=versions())
        return result

    # -- checkpoint -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"step": self.step, "elapsed": self.elapsed, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "stream": self.stream.state_dict(),
                 "task": self.task.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["step"] % self.steps_per_epoch or state["step"] > self.total_steps:
            raise ValueError(f"step {state['step']} is not an epoch end of this run")
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        self.task.load_state_dict(state.get("task", {}))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


class RetrainFolder(RunFolder):
    """A run folder for a retraining: config.json, log.jsonl (one line per epoch), checkpoint.pt, result.json."""

    def plot(self) -> None:  # the search's plot reads search records; a retraining's curve is its log.jsonl
        pass


def train(space, arch, task, config: RetrainConfig, device, progress: bool = True, folder: RunFolder | None = None,
          stop_after: int | None = None) -> dict | None:
    """Train ``arch`` of ``space`` from scratch on ``task`` and test it; with ``folder``, a checkpoint after every
    epoch (continued from when the folder was opened with ``resume=True``) and result.json at the end. Returns
    the result (None when stopped by ``stop_after``)."""
    from .tasks import as_task

    run = Retraining(space, arch, as_task(task), config, device)
    if folder is not None:
        folder.restore(run.load_state_dict)
    result = run.run(folder, progress, stop_after)
    if result is not None and folder is not None:
        folder.write_result(result)
    return result


# --- where the architecture comes from, and the library entry point -------------------------------------
def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent} holds no {what} ({path.name}); pass the folder of a finished "
                        "'oneshot search'") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is unreadable or corrupt ({type(e).__name__}); rerun the search, or pass the "
                        "architecture itself with --space and --arch") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); rerun the search, or pass --space and --arch")
    return value


def read_run(run_dir: str | os.PathLike) -> dict:
    """What a finished search folder says: space, space_options, task, task_options, data, architecture (str),
    search_seconds. Checked field by field, so a damaged file is one line."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder of a finished 'oneshot search'")
    result = _read_json(folder / "result.json", "finished search")
    config = _read_json(folder / "config.json", "search settings")
    checks = (("architecture", result, str, False), ("space", config, str, False),
              ("space_options", config, dict, True), ("task", config, str, True),
              ("task_options", config, dict, True), ("data", config, str, True))
    for key, source, kind, optional in checks:
        value = source.get(key)
        if not (isinstance(value, kind) or (optional and value is None)):
            name = "result.json" if source is result else "config.json"
            raise UserError(f"{folder / name} is corrupt ({key!r} is {value!r}); rerun the search, or pass the "
                            "architecture itself with --space and --arch")
    return {"space": config["space"], "space_options": config.get("space_options") or {},
            "task": config.get("task"), "task_options": config.get("task_options") or {},
            "data": config.get("data"), "architecture": result["architecture"],
            "search_seconds": result.get("search_seconds")}


def parse_arch(space, text: str):
    """``space.from_string(text)``, with any failure one line."""
    try:
        return space.check(space.from_string(text))
    except UserError as e:
        hint = f" (and {text!r} is no folder)" if os.sep in text else ""
        raise UserError(f"{e}{hint}") from None
    except Exception as e:  # a space of your own may raise anything on a malformed string
        raise UserError(f"{space.name}: cannot read the architecture {text!r} ({type(e).__name__}: {e})") from None


def retrain(arch: str | None = None, *, run: str | None = None, space: str | None = None,
            space_options: dict | None = None, task: str | None = None, task_options: dict | None = None,
            data: str | None = None, preset: str = "cpu", changes: dict | None = None, out: str | None = None,
            device: str = "auto", resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Retrain an architecture from scratch into the run folder ``out``, as ``oneshot retrain`` does.

    The architecture is ``run`` (a finished search folder: its space, task and data come along) or ``arch``
    with ``space`` (an architecture string, a released name such as ``snas_moderate``, or a search folder).
    Everything (source folder, space, architecture, settings, output folder) is checked before the data is
    loaded. From a search folder the result is also written to ``RUN/retrain-PRESET.json``."""
    from . import tasks
    from .spaces import create_space
    from .trainer import resolve_device

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if arch is not None and run is not None:
        raise UserError("give a search folder or --arch, not both")
    if arch is not None and Path(arch).is_dir():
        arch, run = None, arch
    searched_task_options: dict = {}
    if run is not None:
        source = read_run(run)
        if space is not None and space != source["space"]:
            raise UserError(f"{run} searched space {source['space']}, not {space}; drop --space")
        space = source["space"]
        space_options = {**source["space_options"], **(space_options or {})}
        task, data = task or source["task"], data if data is not None else source["data"]
        searched_task_options = source["task_options"]
        arch = source["architecture"]
    elif arch is None:
        raise UserError("nothing to retrain: pass a search folder, or --space and --arch")
    elif space is None:
        raise UserError("--arch needs --space (nb201, enas_micro, darts, rnn, ...)")
    space_obj = create_space(space, **(space_options or {}))
    arch_tuple = parse_arch(space_obj, arch)
    config = retrain_preset(preset, space, **(changes or {})).validated()
    task = task or ("ptb" if space == "rnn" else "cifar10")
    # the search's task options, then the preset's (rnn cpu: fallback), then the user's
    task_options = {**searched_task_options, **config.task_options, **(task_options or {})}
    if out is None:
        out = os.path.join(run, f"retrain-{preset}") if run else f"runs/retrain-{space}-{preset}-s{config.seed}"
    if not resume and not overwrite and RunFolder.holds_run(out):
        RunFolder.refuse(out)
    if resume and not (Path(out) / "config.json").is_file():
        raise UserError(f"nothing to resume in {out} (no retraining was started there); drop --resume")
    record = {"command": "retrain", "space": space, "space_options": space_options or {},
              "architecture": space_obj.to_string(arch_tuple), "source": None if run is None else str(run),
              "task": task, "task_options": task_options, "data": data, "retrain": config.to_dict()}
    device = resolve_device(device)
    task_obj = tasks.create(task, data=data, **task_options)  # only now: the data is the slow part
    # a retraining begun by an older version had the defaults of the settings added since
    with RetrainFolder(out, record, resume=resume, overwrite=overwrite,
                       defaults={"retrain": RetrainConfig().to_dict()}) as folder:
        result = train(space_obj, arch_tuple, task_obj, config, device, progress, folder)
    result["out"] = str(out)
    if run is not None:
        result["search_seconds"] = source["search_seconds"]
        result["summary"] = str(Path(run) / f"retrain-{preset}.json")
        atomic_write(Path(result["summary"]), json.dumps(result, indent=2).encode())
    return result
