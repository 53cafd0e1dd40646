"""The strategy interface (ask/tell), the registry, and the shared θ machinery.

A strategy owns a distribution over architectures. Each training iteration the trainer calls
``ask(phase)`` for a *population* of samples (most strategies: one; ASNG: a ranked pair), runs the supernet on
each, and calls ``tell(samples, losses, gate_grads, phase)`` with all of them at once, as cmaes does. Whatever a
strategy needs to know about a sample at ``tell`` travels in ``Sample.info``, so no strategy holds state
between ``ask`` and ``tell``. ``phase`` is ``"warmup"`` (weights only), ``"weight"`` (a weight step of the search
phase) or ``"arch"`` (an architecture step); only ``"arch"`` calls update θ, but every call is told so that e.g.
REINFORCE can track its loss baseline. How a strategy wants to be trained is declared as class attributes that
the trainer reads; the trainer never asks which strategy it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import UserError
from ..spaces.base import Architecture, SearchSpace


@dataclass
class Sample:
    """What ``ask`` hands to the trainer.

    gates:  (decisions, max_choices) gate values, or None to run ``active`` unscaled (a plain child).
    active: op indices to run per decision (host-side), or None to run every op (dense propagation).
    arch:   the discrete architecture this step stands for (the sampled one, or the argmax of a relaxed one).
    unit:   every active gate equals exactly 1 (one-hot samples), which lets the supernet skip the multiply.
    inactive_grad: also compute dL/dgate for the ops that did not run, as if each added gate * 1 (GDAS).
    info:   whatever the strategy needs again at ``tell`` (the trainer never reads it).
    """

    gates: torch.Tensor | None
    active: list[list[int]] | None
    arch: Architecture
    unit: bool = False
    inactive_grad: bool = False
    info: dict = field(default_factory=dict)  # strategy-private data for ``tell`` (e.g. Gumbel noise, τ)


class Strategy:
    name = "base"
    # The training pattern, read by the trainer:
    # arch steps use a batch of the "val" split (bilevel), of the "train" split, or are "same": single-level, the
    # weight step's one forward and backward on a training batch give dL/dgate too (SNAS)
    arch_batch = "val"
    needs_gate_grad = True      # arch steps need dL/dgate (False: the loss alone, e.g. REINFORCE-style)
    updates_theta = True        # False: nothing to learn (random search); the trainer skips arch steps
    derive_by_validation = 0    # >0: the final architecture is the best of this many children on val data
    # what the paper's code reports as the result (``--set derive=paper``): "derive" (this class's ``derive``) or
    # "best_sampled" (the sampled architecture with the lowest arch-step loss seen)
    paper_derivation = "derive"
    # how an arch step's dL/dgate is taken: "direct" (at the current weights) or "unrolled" (at a virtual weight
    # step, DARTS second order; oneshot.unrolled)
    arch_gradient = "direct"

    def __init__(self, space: SearchSpace, seed: int = 0, device: str | torch.device = "cpu",
                 lr: float | None = None):
        """``lr`` is θ's learning rate; strategies without θ accept and ignore it, so callers need not ask."""
        self.space = space
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    # -- the interface --------------------------------------------------------------------------
    def ask(self, phase: str) -> list[Sample]:
        """The samples of one step: each is evaluated on the same batch and all are told together."""
        raise NotImplementedError

    def tell(self, samples: Sequence[Sample], losses: Sequence[float],
             gate_grads: Sequence[torch.Tensor | None] | None, phase: str) -> None:
        """The losses (and, for ``needs_gate_grad`` arch steps, dL/dgate) of the samples of one ``ask``."""

    def loss_term(self, sample: Sample, gates: torch.Tensor) -> torch.Tensor | None:
        """A term of the strategy's own added to the task loss before backward (e.g. SNAS's resource penalty);
        ``gates`` is the tensor that entered the supernet, so the term's gradient reaches dL/dgate."""
        return None

    def derive(self) -> Architecture:
        raise NotImplementedError

    def set_schedule(self, lr_scale: float, progress: float) -> None:
        """Called by the trainer before each arch step: lr multiplier and fraction of arch steps done."""

    def probabilities(self) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    # -- helpers shared by the sampling strategies ----------------------------------------------
    def sample_from(self, probs: torch.Tensor) -> list[int]:
        """One categorical draw per row, on the host (probabilities are tiny: E x K)."""
        return torch.multinomial(probs.detach().cpu().double(), 1, generator=self.generator)[:, 0].tolist()

    def one_hot(self, index: Sequence[int]) -> torch.Tensor:
        gates = torch.zeros(len(self.space), self.space.max_choices)
        gates[torch.arange(len(index)), torch.as_tensor(index)] = 1.0
        return gates.to(self.device)

    def one_hot_sample(self, index: Sequence[int]) -> Sample:
        """A single-path sample: op ``index[i]`` on decision ``i``, gate 1."""
        index = tuple(int(k) for k in index)
        return Sample(self.one_hot(index), [[k] for k in index], index, unit=True)


class ThetaStrategy(Strategy):
    """A strategy with logits θ (decisions x max_choices) trained by Adam, as in the AdvantageNAS code:
    coupled L2 added to the gradient, then global-norm clipping, then Adam (spec §1, pitfall 7)."""

    def __init__(self, space: SearchSpace, seed: int = 0, device="cpu", lr: float | None = 3e-4,
                 betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 3e-3, grad_clip: float = 1.0):
        if not space.categorical:
            raise UserError(f"strategy {self.name!r} handles categorical decisions only; {space.name} has integers "
                            "(use asng)")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise UserError(f"strategy {self.name!r}: --hp weight_decay must be finite and not negative, got "
                            f"{weight_decay}")
        if not grad_clip > 0:
            raise UserError(f"strategy {self.name!r}: --hp grad_clip must be positive (inf: no clipping), got "
                            f"{grad_clip}")
        if not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            raise UserError(f"strategy {self.name!r}: --hp betas must be two numbers in [0, 1), got {betas}")
        super().__init__(space, seed, device)
        lr = 3e-4 if lr is None else lr
        self.mask = space.choice_mask().to(self.device)
        theta = torch.ones(self.mask.shape, device=self.device)
        theta[:, 0] += 1e-6  # as in the official code: a deterministic initial argmax (op 0)
        self.theta = torch.nn.Parameter(theta)
        self.base_lr, self.weight_decay, self.grad_clip = lr, weight_decay, grad_clip
        self.progress = 0.0  # fraction of arch steps done, for temperature schedules
        self.optimizer = torch.optim.Adam([self.theta], lr=lr, betas=betas)

    def logits(self) -> torch.Tensor:
        return self.theta.masked_fill(~self.mask, -math.inf)

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits(), -1).detach()

    def derive(self) -> Architecture:
        return tuple(self.logits().argmax(-1).tolist())

    def set_schedule(self, lr_scale: float, progress: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * lr_scale
        self.progress = progress

    def apply_gradient(self, grad: torch.Tensor | None) -> None:
        """One optimiser step on θ with the estimated gradient of E[L] (None: a step with no gradient)."""
        if grad is not None:
            grad = grad.masked_fill(~self.mask, 0.0) + self.weight_decay * self.theta.detach()
            norm = grad.norm()
            if norm > self.grad_clip:
                grad = grad * (self.grad_clip / (norm + 1e-6))
        self.theta.grad = grad
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "theta": self.theta.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = state["progress"]


# --- registry --------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[Callable[..., Strategy], str]] = {}
_CLASSES: dict[str, tuple[type, str, dict]] = {}  # name -> (class, description, preset hyper-parameters)


def register(name: str, description: str, **defaults):
    """Class decorator: make a strategy creatable by name (extra names may preset hyper-parameters)."""

    def wrap(cls):
        _REGISTRY[name] = (lambda space, **hp: cls(space, **{**defaults, **hp}), description)
        _CLASSES[name] = (cls, description, defaults)
        return cls

    return wrap


def create(name: str, space: SearchSpace, **hparams) -> Strategy:
    from .. import plugins

    plugins.load()
    if name not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}; choose from {', '.join(sorted(_REGISTRY))} "
                        "(list them with 'oneshot strategies')")
    factory, _ = _REGISTRY[name]
    hparams = coerce_hyperparameters(name, hparams) if name in _CLASSES else hparams
    try:
        return factory(space, **hparams)
    except TypeError as e:
        raise UserError(f"strategy {name!r}: bad hyper-parameter ({e})") from None


def available() -> dict[str, str]:
    from .. import plugins

    plugins.load()
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def hyperparameters(name: str) -> dict[str, tuple[str, object]]:
    """``{hyper-parameter: (type name, default)}`` of a registered strategy, from its constructor's signature
    (the arguments every strategy takes, space/seed/device, left out; ``lr`` is the trainer's ``a_lr``)."""
    import inspect

    cls, _, defaults = _CLASSES[name]
    params = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for p in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in ("space", "seed", "device", "lr") or p.name in params:
                continue
            default = defaults.get(p.name, p.default)
            params[p.name] = (type(default).__name__ if default is not None else "float", default)
    return params


def coerce_hyperparameters(name: str, options: dict) -> dict:
    """``--hp`` values as their declared types (``baseline=False`` is False, not the string), or one UserError."""
    from ..config import coerce

    known = hyperparameters(name)
    out = {}
    for key, value in options.items():
        if key in ("seed", "device", "lr"):  # what every strategy takes; lr is the trainer's a_lr
            out[key] = value
            continue
        if key not in known:
            raise UserError(f"strategy {name!r} has no hyper-parameter {key!r}; it takes "
                            f"{', '.join(known) or 'none'} (see 'oneshot strategies --details')")
        kind = type(known[key][1]) if known[key][1] is not None else float
        out[key] = coerce(key, value, kind) if kind in (bool, int, float, str) else value
    return out
