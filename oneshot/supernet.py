"""The gated mixed operation that every supernet is built from.

``MixedOp`` holds the candidate ops of one decision and computes ``sum_k gate[k] * op_k(x)`` over the ops
listed in ``active`` only. With a one-hot gate and ``active=[k]`` that is the cost of one child
(sparse propagation); with a softmax gate and every op active it is DARTS-style dense propagation.
Multiplying by the gate is what makes autograd return ``dL/dgate[k] = <dL/de, op_k(x)>``.

``active`` is a host-side list computed once per step by the strategy: reading sampled indices back from the
device inside the forward would cost a synchronisation per edge.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class UnitGate(torch.autograd.Function):
    """``gate * y`` for a gate whose value is exactly 1 (a one-hot sample), without its cost.

    The forward returns ``y`` itself and the backward passes ``dL/dy`` through untouched, so the only work
    left is the one the estimators need: ``dL/dgate = <dL/dout, y>``, a single dot product. A plain
    multiplication would write and read two more activation-sized tensors per edge.
    """

    @staticmethod
    def forward(ctx, y, gate):
        ctx.save_for_backward(y)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        grad_gate = torch.dot(grad_out.reshape(-1), y.reshape(-1)) if ctx.needs_input_grad[1] else None
        return grad_out, grad_gate


class InactiveGates(torch.autograd.Function):
    """Adds ``sum_j gate[j] * 1`` over the ops that did not run, as GDAS does: value unchanged (those
    gates are 0), but ``dL/dgate[j] = sum(dL/dout)`` for them. One reduction per edge, and only when asked."""

    @staticmethod
    def forward(ctx, out, gate, inactive):
        ctx.save_for_backward(inactive)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        (inactive,) = ctx.saved_tensors
        return grad_out, grad_out.sum() * inactive, None


class MixedOp(nn.Module):
    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None, active: Sequence[int] | None,
                unit_gates: bool = False, inactive_grad: bool = False) -> torch.Tensor:
        """``gate``: (K,) weights or None (run ``active`` unscaled); ``active``: op indices or None (all);
        ``unit_gates``: the caller guarantees that the active gates equal 1 (one-hot samples);
        ``inactive_grad``: also give the ops that did not run the gradient ``sum(dL/dout)`` (GDAS)."""
        if active is None:
            active = range(len(self.ops))
        out = None
        for k in active:
            y = self.ops[k](x)
            if gate is not None:
                y = UnitGate.apply(y, gate[k]) if unit_gates else gate[k] * y
            out = y if out is None else out + y
        if inactive_grad and gate is not None and gate.requires_grad:
            # one-hot samples: the ops that did not run are those whose gate is 0 (no host-to-device index copy)
            out = InactiveGates.apply(out, gate, (gate.detach() == 0).to(gate.dtype))
        return out


def active_from_gates(gates: torch.Tensor) -> list[list[int]]:
    """Indices of the non-zero gate entries per row, read back to the host in one transfer."""
    nonzero = (gates.detach() != 0).cpu().tolist()
    return [[k for k, on in enumerate(row) if on] for row in nonzero]
