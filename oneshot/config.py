"""Search configuration and its presets.

``paper`` is the AdvantageNAS NB201 protocol (spec advantagenas.md §3) for a GPU. ``cpu`` is a documented
reduction that finishes in about 4 minutes on a 2-core CPU: the same schedules, optimisers and alternation,
on a narrower and shallower network (C=8, one cell per stage), 10,000 + 10,000 images, 14 epochs (7 warm-up)
and a θ learning rate raised to make up for the 14x fewer arch steps.
``smoke`` only proves that everything runs end to end (well under a minute).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from .errors import UserError


DERIVATIONS = ("strategy", "best_sampled", "paper")


@dataclass
class SearchConfig:
    # what is searched, on what: everything a rerun needs is here (config.json of a run is a valid --config)
    task: str = "cifar10"
    task_options: dict = field(default_factory=dict)  # e.g. {"size": 48} for an image folder
    data: str | None = None      # --data: where the task reads its data (None: the task's default)
    device: str = "auto"
    preset: str = "cpu"
    space: str = "nb201"
    space_options: dict = field(default_factory=dict)  # e.g. {"ops": 5} for NB201 with 'none'
    restrict: dict = field(default_factory=dict)  # kept choices per decision, e.g. from ABS shrinking
    strategy: str = "advantage"
    strategy_options: dict = field(default_factory=dict)  # hyper-parameters passed to strategies.create
    seed: int = 0
    # supernet
    channels: int = 16
    cells_per_stage: int = 5
    op_style: str = "advantage"
    op_bn_affine: bool | None = None  # affine BN inside the cell ops (None: the op style's own choice)
    network_options: dict = field(default_factory=dict)  # more options for the space's networks, e.g. {"hidden": 64}
    channels_last: bool = False  # NHWC weights and images (supernet.use_channels_last; the darts presets: faster)
    # data: first n_weight (shuffled) training images train the weights, the last n_arch train θ
    n_weight: int = 25_000
    n_arch: int = 25_000
    batch_size: int = 64         # the global batch, over all processes
    micro_batches: int = 1       # chunks per process and step (gradient accumulation; BN statistics per chunk)
    augment: bool = True
    cutout: int = 0              # side of the cut-out square (0: none), on both splits as in ASNG-NAS
    # schedule: warm-up epochs train weights only; afterwards one arch step precedes every weight step
    epochs: int = 90
    warmup_epochs: int = 50
    # weights: Nesterov SGD, cosine lr per integer epoch, coupled L2 then global-norm clipping
    w_lr: float = 0.1
    w_lr_min: float = 0.0        # the cosine ends here ...
    w_cosine_epochs: int = 0     # ... after this many epochs (0: the run's epochs; ABS's code fixes 250)
    w_momentum: float = 0.9
    w_nesterov: bool = True
    w_weight_decay: float = 5e-4
    w_grad_clip: float = 1.0
    w_keep_zero_grads: bool = False  # unsampled ops keep decaying (torch < 2.0 zero_grad; ABS's code)
    # θ: Adam with cosine lr over the search epochs (the strategy owns betas, coupled L2 and clipping)
    a_lr: float = 3e-4
    # bookkeeping
    log_every: int = 70          # iterations between logged argmax architectures
    checkpoint_every: int = 500  # iterations between checkpoints (also at every epoch end)
    eval_batches: int = 10       # val batches (of 256) per child when a strategy derives by validation
    tensorboard: bool = False    # also write the log's numbers as TensorBoard scalars into OUT/tensorboard
    eval_child: bool = False     # at the end, test the derived child inside the supernet and the supernet itself
    eval_limit: int = 0          # ... on the first this-many test examples (0: all of them)
    # the result's architecture: the strategy's own rule ("strategy"), the best sampled one ("best_sampled": the
    # lowest arch-step loss seen), or what the paper's code reports for this strategy ("paper": best sampled for
    # REINFORCE and GDAS, argmax for the others; the rnn presets use it, as the AdvantageNAS PTB protocol)
    derive: str = "strategy"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "SearchConfig":
        """A copy with ``changes``, each coerced to its setting's type (strings from the command line too)."""
        types = typing.get_type_hints(SearchConfig)
        unknown = set(changes) - set(types)
        if unknown:
            raise UserError(f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(types)}")
        return dataclasses.replace(self, **{k: coerce(k, v, types[k]) for k, v in changes.items()})

    def validated(self) -> "SearchConfig":
        """This configuration if every value is in range, else one UserError naming the setting and the fix."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(f"{message}; change it with --set")

        for name in ("batch_size", "micro_batches", "channels", "cells_per_stage", "epochs", "log_every",
                     "checkpoint_every", "eval_batches"):
            need(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_weight", "n_arch", "cutout", "warmup_epochs", "eval_limit"):
            need(getattr(self, name) >= 0, f"{name} must not be negative, got {getattr(self, name)}")
        need(self.warmup_epochs < self.epochs, f"warmup_epochs ({self.warmup_epochs}) must be below epochs "
                                               f"({self.epochs}), or nothing is searched")
        for name in ("w_lr", "a_lr"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive finite number, got {value}")
        need(self.w_grad_clip > 0, f"w_grad_clip must be positive (inf: no clipping), got {self.w_grad_clip}")
        need(math.isfinite(self.w_lr_min) and 0 <= self.w_lr_min <= self.w_lr,
             f"w_lr_min must lie in [0, w_lr], got {self.w_lr_min}")
        need(self.w_cosine_epochs >= 0, f"w_cosine_epochs must not be negative, got {self.w_cosine_epochs}")
        need(math.isfinite(self.w_weight_decay) and self.w_weight_decay >= 0,
             f"w_weight_decay must be finite and not negative, got {self.w_weight_decay}")
        need(0 <= self.w_momentum < 1, f"w_momentum must lie in [0, 1), got {self.w_momentum}")
        need(self.op_style in ("advantage", "nb201"), f"op_style must be advantage or nb201, got {self.op_style!r}")
        need(self.derive in DERIVATIONS, f"derive must be one of {', '.join(DERIVATIONS)}, got {self.derive!r}")
        return self


def coerce(name: str, value, kind):
    """``value`` as ``kind`` (int, float, bool, str, dict or an Optional of one), or one UserError line."""
    options = [k for k in typing.get_args(kind) if k is not type(None)] if typing.get_origin(kind) else [kind]
    if value is None and type(None) in typing.get_args(kind):
        return None
    target = options[0]
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if target is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise UserError(f"setting {name!r} needs {'true/false' if target is bool else 'a JSON object' if target is dict else 'an ' + target.__name__ if target is int else 'a ' + target.__name__}, got {value!r}")


PRESETS: dict[str, dict] = {
    "paper": {},
    # 14 epochs of 10k images give 7 x 156 = 1,092 arch steps instead of the paper's 15,625, so θ's
    # learning rate is raised by about that factor (3e-4 -> 5e-3) to let θ move as far as in the paper.
    "cpu": dict(channels=8, cells_per_stage=1, n_weight=10_000, n_arch=10_000, epochs=14, warmup_epochs=7,
                a_lr=5e-3, log_every=20, checkpoint_every=200, eval_batches=2),
    "smoke": dict(channels=4, cells_per_stage=1, n_weight=512, n_arch=512, epochs=2, warmup_epochs=1,
                  log_every=4, checkpoint_every=8, eval_batches=2),
    # ABS's NB201 supernet training (megvii-model/AngleNAS, NAS-Bench-201/, SPOS.config; issue 16): NB201's own
    # network (lastact; cell-op BN without affine, running statistics kept), the 5 ops, per-cell uniform sampling
    # (strategy abs_uniform), SGD Nesterov 0.025 cosine to 0.001 per epoch with T_max = 250 whatever the run's
    # length, coupled wd 5e-4, batch 64, no clipping, 25k + 25k images, no warm-up, and zero_grad as torch < 2.0
    # did it (unsampled ops keep decaying: it lifts the angle's τ from 0.46 to 0.56 after 2 epochs,
    # benchmarks/results/abs_ranking_abs_cpu*.json). Kept: drop_last batches. `abs-cpu`: 3 epochs of the same.
    "abs": dict(strategy="abs_uniform", space_options={"ops": 5}, op_style="nb201",
                op_bn_affine=False, epochs=250, warmup_epochs=0, w_lr=0.025, w_lr_min=0.001, w_cosine_epochs=250,
                w_grad_clip=float("inf"), w_keep_zero_grads=True, log_every=100, checkpoint_every=200),
}
PRESETS["abs-cpu"] = {**PRESETS["abs"], "epochs": 3}


# ASNG-NAS on the ENAS micro space (spec asng.md §3): 8 cells, C=16, 100 epochs, no warm-up, SGD (not Nesterov)
# lr 0.025 cosine, wd 3e-4, clipping at 5, cutout 16 on both halves. `cpu`: 5 cells at C=8, 5k + 5k images,
# 3 epochs (about 5 minutes on 2 cores).
ENAS_PAPER = dict(space_options={"cells": 8}, channels=16, epochs=100, warmup_epochs=0, w_lr=0.025,
                  w_nesterov=False, w_weight_decay=3e-4, w_grad_clip=5.0, cutout=16, log_every=100)
# SNAS on the DARTS CNN space (spec snas.md §4): 8 cells, C=16, batch 64, 150 epochs, no warm-up, SGD (not
# Nesterov) lr 0.025 cosine, wd 3e-4, clipping 5, drop-path 0.3 on every edge, crop + flip, no cutout; α by Adam
# 3e-4 (the strategy's own settings). The official code trains on all 50k images and only monitors the test set;
# the paper reportedly split 25k/25k: we keep 25k for the weights (and θ, single-level) and 25k for DARTS's
# bilevel arch steps, so the two searches see the same images. `eval_child` tests the child without retraining.
# `cpu` (SNAS: about 12 min on 2 idle cores): 5 cells at C=8, 4k + 4k images, batch 32, 4 epochs; α's lr raised
# (3e-4 -> 3e-3) for the ~300x fewer steps; supernet and child without retraining tested on 2,000 test images (a
# fixed random subset: all 10,000 take the dense supernet a third of the search). Two changes for a supernet
# trained for minutes, each measured at this budget (README, SNAS/DARTS): no drop-path (with 0.3 the SNAS
# supernet's training loss was still 2.37 after 120 steps, 2.15 without), and one warm-up epoch of weights only
# before α moves (without it the young supernet's gradient favours `none` on most edges, penalty or not; the
# official single-GPU code's α, plain SGD at 3e-4, hardly moves in its first epochs either).
DARTS_PAPER = dict(space_options={"cells": 8, "drop_path": 0.3}, channels=16, channels_last=True, epochs=150,
                   warmup_epochs=0, w_lr=0.025, w_nesterov=False, w_weight_decay=3e-4, w_grad_clip=5.0, log_every=100,
                   eval_child=True)
# AdvantageNAS on PTB (spec advantagenas.md, "PTB RNN cell"): embedding/hidden 300, batch 256, BPTT 35, summed
# per-step losses, no warm-up, arch steps on training batches (the task hands both steps one stream), weights by
# plain SGD lr 20 cosine, clip 0.25, no weight decay; θ by Adam 3e-3 cosine, no weight decay. The official 30 epochs
# count passes over the data shared by arch and weight steps: 15 of our epochs (each iteration reads two windows).
# `cpu`: PTB's train file is not here, so the task's fallback (first 90 % of valid trains, last 10 % validates,
# test tests; stated in the log and result.json), hidden 64, batch 64, 12 epochs (348 iterations).
RNN_PAPER = dict(task="ptb", derive="paper", space_options={}, network_options={"hidden": 300}, batch_size=256, epochs=15,
                 warmup_epochs=0, w_lr=20.0, w_momentum=0.0, w_nesterov=False, w_weight_decay=0.0,
                 w_grad_clip=0.25, a_lr=3e-3, strategy_options={"weight_decay": 0.0}, augment=False,
                 log_every=20, checkpoint_every=100, eval_batches=1)
SPACE_PRESETS: dict[str, dict[str, dict]] = {
    "rnn": {
        "paper": RNN_PAPER,
        "cpu": {**RNN_PAPER, "task_options": {"fallback": True}, "network_options": {"hidden": 64},
                "batch_size": 64, "epochs": 12, "log_every": 10, "checkpoint_every": 50},
        "smoke": {**RNN_PAPER, "task_options": {"fallback": True}, "network_options": {"hidden": 16},
                  "batch_size": 32, "epochs": 1, "log_every": 5, "checkpoint_every": 10},
    },
    "darts": {
        "paper": DARTS_PAPER,
        "cpu": {**DARTS_PAPER, "space_options": {"cells": 5, "drop_path": 0.0}, "channels": 8, "batch_size": 32,
                "n_weight": 4_000, "n_arch": 4_000, "epochs": 4, "warmup_epochs": 1, "a_lr": 3e-3, "log_every": 20,
                "checkpoint_every": 100, "eval_limit": 2_000},
        "smoke": {**DARTS_PAPER, "space_options": {"cells": 3, "drop_path": 0.3}, "channels": 4, "batch_size": 16,
                  "n_weight": 128, "n_arch": 128, "epochs": 2, "log_every": 4, "checkpoint_every": 8,
                  "eval_limit": 256},
    },
    "enas_micro": {
        "paper": ENAS_PAPER,
        "cpu": {**ENAS_PAPER, "space_options": {"cells": 5}, "channels": 8, "n_weight": 5_000, "n_arch": 5_000,
                "epochs": 3, "log_every": 20, "checkpoint_every": 200},
        "smoke": {**ENAS_PAPER, "space_options": {"cells": 3}, "channels": 4, "n_weight": 512, "n_arch": 512,
                  "epochs": 2, "log_every": 4, "checkpoint_every": 8},
    },
}


def preset(name: str, **changes) -> SearchConfig:
    """The preset ``name`` for ``changes["space"]`` (NB201's when the space has none of its own)."""
    presets = SPACE_PRESETS.get(changes.get("space", "nb201"), PRESETS)
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(presets)}")
    base = presets[name]
    options = {**base.get("space_options", {}), **changes.pop("space_options", {})}
    return SearchConfig().replace(**base).replace(space_options=options, preset=name, **changes)


def load_config_file(path: str) -> dict:
    """The settings of a JSON or YAML file (e.g. a run's config.json), checked to be a mapping."""
    from pathlib import Path

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the config file {path} ({getattr(e, 'strerror', None) or e}); "
                        "pass --config a JSON or YAML file") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            settings = yaml.safe_load(text)
        else:
            import json

            settings = json.loads(text)
    except Exception as e:  # a parser's own error types differ; any of them means the same to the user
        raise UserError(f"{path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} "
                        f"({type(e).__name__}); fix the file") from None
    if not isinstance(settings, dict):
        raise UserError(f"{path} must hold a mapping of settings (name: value), not a {type(settings).__name__}")
    return settings
