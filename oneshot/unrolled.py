"""The unrolled (second-order) architecture gradient of DARTS (Liu et al. 2019, eq. 7-8).

With weights w, gates a and the weight learning rate ξ, the gradient of L_val(w', a) at the virtual SGD step
w' = w − ξ·step(w, ∇w L_train(w, a)) is

    dL_val(w', a)/da = ∇a L_val(w', a) − ξ·s·∇²_{a,w} L_train(w, a) · ∇w' L_val(w', a),

where s = dstep/dg: 1 for plain momentum SGD, 1 + μ for Nesterov's, times the clipping factor κ when the step
clips its gradient (κ held constant, as DARTS's RNN code does). The Hessian-vector product is a central finite
difference: with v = ∇w' L_val(w', a) and R = r / ‖v‖,
(∇a L_train(w + R v, a) − ∇a L_train(w − R v, a)) / 2R.

The model is evaluated at w', w + Rv and w − Rv by writing those values into its parameters in place; the saved w
is copied back at the end (bit-exact, also after an error), so the weight optimiser never sees the detour.
Every pass on the training batch replays the random numbers of the first one (drop-path masks agree, so the
finite difference compares like with like) and leaves the given buffers (BN running statistics) as they were;
the validation pass at w' updates them once, as a first-order arch step's forward does.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Sequence

import torch

from .errors import UserError

# One chunk (micro-batch) after another: each yields a scalar, already divided by the number of chunks, so that the
# sum over chunks is the batch's mean loss. A val chunk yields (loss, objective): the task loss and the loss that is
# differentiated (the task loss plus the strategy's own term).
TrainLosses = Callable[[torch.Tensor], Iterable[torch.Tensor]]
ValLosses = Callable[[torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def check_applicable(strategy, arch_gradient: str, world: int) -> None:
    """Refuse, before any step, a strategy's ``arch_gradient`` declaration that the trainer cannot serve:
    "direct" (dL/dgate at the current weights) always works; "unrolled" needs validation arch steps with dL/dgate
    in a single process."""
    name = strategy.name
    if arch_gradient not in ("direct", "unrolled"):
        raise UserError(f"strategy {name!r} declares arch_gradient={arch_gradient!r}; the trainer knows 'direct' and "
                        "'unrolled'")
    if arch_gradient == "direct":
        return
    if strategy.arch_batch != "val" or not strategy.needs_gate_grad:
        raise UserError(f"strategy {name!r}: the unrolled (second-order) gradient needs arch steps on a validation "
                        "batch with dL/dgate; use order=1")
    if world > 1:
        raise UserError(f"strategy {name!r}: the unrolled (second-order) gradient runs in one process; use "
                        "--set micro_batches=N instead of torchrun, or order=1")


def virtual_step(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                 buffers: Sequence[torch.Tensor | None], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 max_norm: float = math.inf) -> tuple[list[torch.Tensor], float]:
    """(w', s): the trainer's weight step from w with gradient g, and s = dstep/dg with the clipping factor held.

    d = g + wd·w, clipped to global norm ``max_norm`` (κ = min(1, max_norm / (‖d‖ + 1e-6)), as
    ``clip_grad_norm_``), then torch's SGD (dampening 0): w' = w − ξ(μ·buffer + κd) (DARTS's architect,
    κ = 1), or with Nesterov w − ξ((1+μ)κd + μ²·buffer). A missing momentum buffer (no step yet) is 0; a
    weight without a gradient (unused by the loss) stays put and does not count in the norm, as SGD and the
    trainer skip it."""
    decayed = [None if g is None else g + weight_decay * w.detach() for w, g in zip(weights, grads)]
    present = [d for d in decayed if d is not None]
    kappa = 1.0
    if present and math.isfinite(max_norm):
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in present])))
        kappa = min(1.0, max_norm / (norm + 1e-6))
    scale = (1.0 + momentum if nesterov else 1.0) * kappa
    out = []
    for w, d, buf in zip(weights, decayed, buffers):
        if d is None:
            out.append(w.detach().clone())
            continue
        step = scale * d
        if buf is not None and momentum:
            step = step + (momentum * momentum if nesterov else momentum) * buf
        out.append(w.detach() - lr * step)
    return out, scale


@contextlib.contextmanager
def _weights_restored(weights: Sequence[torch.Tensor]):
    """Yields a copy of ``weights``' values and copies it back on the way out."""
    saved = [w.detach().clone() for w in weights]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)


def _assign(weights: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for w, v in zip(weights, values):
            w.copy_(v)


@contextlib.contextmanager
def _buffers_kept(buffers: Sequence[torch.Tensor]):
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _gate_gradient(losses: Iterable[torch.Tensor], gates: torch.Tensor) -> torch.Tensor:
    total = torch.zeros_like(gates)
    for loss in losses:
        grad = torch.autograd.grad(loss, gates, allow_unused=True)[0]
        if grad is not None:
            total += grad
    return total


def _weight_gradients(losses: Iterable[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor | None]:
    total: list[torch.Tensor | None] = [None] * len(weights)
    for loss in losses:
        for i, g in enumerate(torch.autograd.grad(loss, weights, allow_unused=True)):
            if g is not None:
                total[i] = g if total[i] is None else total[i] + g
    return total


def unrolled_gate_gradient(gates: torch.Tensor, weights: Sequence[torch.Tensor], train_losses: TrainLosses,
                           val_losses: ValLosses, lr: float, momentum_buffers: Sequence[torch.Tensor | None] = (),
                           momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                           max_norm: float = math.inf, buffers: Sequence[torch.Tensor] = (),
                           r: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL_val(w', a)/da by the finite-difference unrolled formula, L_val(w', a)) at the gates ``gates``.

    ``weights``: the model's trainable parameters (overwritten during the call, restored bit-exactly);
    ``train_losses(g)`` / ``val_losses(g)`` run the model at its current weights with gates ``g``, chunk by chunk;
    ``momentum_buffers`` (None or missing: 0), ``momentum``, ``nesterov``, ``weight_decay``, ``max_norm``: the
    weight step's settings (``virtual_step``); ``buffers``: tensors that the training passes must leave as they found
    them (BN running statistics); ``r``: DARTS's 0.01.
    """
    weights = list(weights)
    buffers = list(buffers)
    momentum_buffers = list(momentum_buffers) or [None] * len(weights)
    device = gates.device
    fixed_gates = gates.detach()
    with _weights_restored(weights) as start:
        noise = _rng_state(device)
        with _buffers_kept(buffers):
            train_grads = _weight_gradients(train_losses(fixed_gates), weights) if weights else []
        w_prime, scale = virtual_step(weights, train_grads, momentum_buffers, lr, momentum, nesterov, weight_decay,
                                      max_norm)
        _assign(weights, w_prime)
        # the validation pass at w': dα and v = dL_val/dw' (the direction of the Hessian-vector product)
        grad_gates = fixed_gates.clone().requires_grad_()
        gate_grad = torch.zeros_like(fixed_gates)
        direction = [torch.zeros_like(w) for w in weights]
        val_loss = torch.zeros((), device=device)
        for loss, objective in val_losses(grad_gates):
            grads = torch.autograd.grad(objective, [grad_gates] + weights, allow_unused=True)
            if grads[0] is not None:
                gate_grad += grads[0]
            for v, g in zip(direction, grads[1:]):
                if g is not None:
                    v += g
            val_loss += loss.detach()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in direction])) \
            if weights else torch.zeros((), device=device)
        if norm > 0:  # along a zero direction the product is 0 (and R would be infinite)
            after_val = _rng_state(device)
            radius = r / norm
            sides = []
            with _buffers_kept(buffers):
                for sign in (1.0, -1.0):
                    _set_rng_state(noise, device)
                    # around w (the saved start), not w': the Hessian is taken at w
                    _assign(weights, [w0 + sign * radius * v for w0, v in zip(start, direction)])
                    side_gates = fixed_gates.clone().requires_grad_()
                    sides.append(_gate_gradient(train_losses(side_gates), side_gates))
            _set_rng_state(after_val, device)
            hessian_vector = (sides[0] - sides[1]) / (2 * radius)
            gate_grad = gate_grad - lr * scale * hessian_vector
    return gate_grad, val_loss
