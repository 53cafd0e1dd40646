"""Search configuration and its presets.

``paper`` is the AdvantageNAS NB201 protocol (spec advantagenas.md §3) for a GPU. ``cpu`` is a documented
reduction that finishes in about 4 minutes on a 2-core CPU: the same schedules, optimisers and alternation,
on a narrower and shallower network (C=8, one cell per stage), 10,000 + 10,000 images, 14 epochs (7 warm-up)
and a θ learning rate raised to make up for the 14x fewer arch steps.
``smoke`` only proves that everything runs end to end (well under a minute).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import UserError


@dataclass
class SearchConfig:
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
    w_momentum: float = 0.9
    w_nesterov: bool = True
    w_weight_decay: float = 5e-4
    w_grad_clip: float = 1.0
    # θ: Adam with cosine lr over the search epochs (the strategy owns betas, coupled L2 and clipping)
    a_lr: float = 3e-4
    # bookkeeping
    log_every: int = 70          # iterations between logged argmax architectures
    checkpoint_every: int = 500  # iterations between checkpoints (also at every epoch end)
    eval_batches: int = 10       # val batches (of 256) per child when a strategy derives by validation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "SearchConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown setting(s) {sorted(unknown)}; valid: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    "paper": {},
    # 14 epochs of 10k images give 7 x 156 = 1,092 arch steps instead of the paper's 15,625, so θ's
    # learning rate is raised by about that factor (3e-4 -> 5e-3) to let θ move as far as in the paper.
    "cpu": dict(channels=8, cells_per_stage=1, n_weight=10_000, n_arch=10_000, epochs=14, warmup_epochs=7,
                a_lr=5e-3, log_every=20, checkpoint_every=200, eval_batches=2),
    "smoke": dict(channels=4, cells_per_stage=1, n_weight=512, n_arch=512, epochs=2, warmup_epochs=1,
                  log_every=4, checkpoint_every=8, eval_batches=2),
}


# ASNG-NAS on the ENAS micro space (spec asng.md §3): 8 cells, C=16, 100 epochs, no warm-up, SGD (not Nesterov)
# lr 0.025 cosine, wd 3e-4, clipping at 5, cutout 16 on both halves. `cpu`: 5 cells at C=8, 5k + 5k images,
# 3 epochs (about 5 minutes on 2 cores).
ENAS_PAPER = dict(space_options={"cells": 8}, channels=16, epochs=100, warmup_epochs=0, w_lr=0.025,
                  w_nesterov=False, w_weight_decay=3e-4, w_grad_clip=5.0, cutout=16, log_every=100)
SPACE_PRESETS: dict[str, dict[str, dict]] = {
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
    return SearchConfig().replace(**base).replace(space_options=options, **changes)
