"""The gated mixed operation that every supernet is built from.

``MixedOp`` holds the candidate ops of one decision and computes ``sum_k gate[k] * op_k(x)`` over the ops
listed in ``active`` only. With a one-hot gate and ``active=[k]`` that is the cost of one child
(sparse propagation); with a softmax gate and every op active it is DARTS-style dense propagation.
Multiplying by the gate is what makes autograd return ``dL/dgate[k] = <dL/de, op_k(x)>``.

``active`` is a host-side list computed once per step by the strategy: reading sampled indices back from the
device inside the forward would cost a synchronisation per edge.

What keeps a step near the cost of the networks it stands for (``benchmarks/step_cost.py``):

- one-hot gates (``unit_gates``): ``UnitGate`` returns the op's output itself, the only extra work is the dot
  product ``dL/dgate = <dL/dout, y>`` in backward;
- several ops weighted by real gates (dense, or a few sampled ops): ``WeightedSum`` is one autograd node per
  edge instead of a select, a multiplication and an addition per op, and takes ``dL/dgate[k]`` as one dot
  product instead of materialising ``dL/dout * y_k`` and summing it;
- ``none`` (an op marked ``is_zero``, or a class named ``Zero``) never runs beside other ops: its output is 0,
  so it adds nothing to the sum and its gate's gradient ``<dL/dout, 0>`` is 0;
- ops that begin with the same ReLU of the edge's input (an ``nn.Sequential`` whose first module is
  ``nn.ReLU``) share one ReLU when several of them run.
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


class WeightedSum(torch.autograd.Function):
    """``sum_k gate[ks[k]] * ys[k]`` as one autograd node: the forward multiplies and adds in the order of ``ks``
    (the values of the per-op expression), the backward gives ``dL/dy_k = gate * dL/dout`` and
    ``dL/dgate = <dL/dout, y_k>`` as a dot product (no activation-sized temporary)."""

    @staticmethod
    def forward(ctx, gate, ks, *ys):
        ctx.ks = ks
        ctx.save_for_backward(gate, *ys)
        out = None
        for k, y in zip(ks, ys):
            scaled = gate[k] * y
            out = scaled if out is None else out.add_(scaled)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gate, *ys = ctx.saved_tensors
        grad_gate = None
        if ctx.needs_input_grad[0]:
            flat = grad_out.reshape(-1)
            grad_gate = torch.zeros_like(gate)
            for k, y in zip(ctx.ks, ys):
                grad_gate[k] = torch.dot(flat, y.reshape(-1))
        grad_ys = [grad_out * gate[k] if needs else None for k, needs in zip(ctx.ks, ctx.needs_input_grad[2:])]
        return (grad_gate, None, *grad_ys)


def is_zero_op(op: nn.Module) -> bool:
    """``none``: an op whose output is always 0 (``is_zero = True``, or a class named ``Zero`` as the spaces
    define it)."""
    return bool(getattr(op, "is_zero", False)) or type(op).__name__ == "Zero"


def leading_relu(op: nn.Module) -> bool:
    """An ``nn.Sequential`` that starts with a (not in-place) ``nn.ReLU``: DARTS's conv ops."""
    return isinstance(op, nn.Sequential) and len(op) > 1 and type(op[0]) is nn.ReLU and not op[0].inplace


class MixedOp(nn.Module):
    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.zero = [is_zero_op(op) for op in self.ops]
        self.relu_first = [leading_relu(op) for op in self.ops]

    def _running(self, active) -> list[int]:
        """The ops to compute: ``active`` (all if None) without the ``none`` ops when anything else runs."""
        ks = range(len(self.ops)) if active is None else active
        if len(ks) > 1 and any(self.zero[k] for k in ks):
            nonzero = [k for k in ks if not self.zero[k]]
            ks = nonzero or ks[:1]
        return list(ks)

    def _outputs(self, x: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
        """Each op's output; ops that begin with a ReLU of ``x`` share one when several run."""
        shared = sum(self.relu_first[k] for k in ks) > 1
        relu_x = torch.relu(x) if shared else None
        outputs = []
        for k in ks:
            op = self.ops[k]
            if shared and self.relu_first[k]:
                y = relu_x
                for module in list(op)[1:]:
                    y = module(y)
            else:
                y = op(x)
            outputs.append(y)
        return outputs

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None, active: Sequence[int] | None,
                unit_gates: bool = False, inactive_grad: bool = False) -> torch.Tensor:
        """``gate``: (K,) weights or None (run ``active`` unscaled); ``active``: op indices or None (all);
        ``unit_gates``: the caller guarantees that the active gates equal 1 (one-hot samples);
        ``inactive_grad``: also give the ops that did not run the gradient ``sum(dL/dout)`` (GDAS)."""
        ks = self._running(active)
        ys = self._outputs(x, ks)
        if gate is not None and not unit_gates:
            out = WeightedSum.apply(gate, ks, *ys)
        else:
            out = None
            for k, y in zip(ks, ys):
                if gate is not None:
                    y = UnitGate.apply(y, gate[k])
                out = y if out is None else out + y
        if inactive_grad and gate is not None and gate.requires_grad:
            # one-hot samples: the ops that did not run are those whose gate is 0 (no host-to-device index copy)
            out = InactiveGates.apply(out, gate, (gate.detach() == 0).to(gate.dtype))
        return out


def active_from_gates(gates: torch.Tensor) -> list[list[int]]:
    """Indices of the non-zero gate entries per row, read back to the host in one transfer."""
    nonzero = (gates.detach() != 0).cpu().tolist()
    return [[k for k, on in enumerate(row) if on] for row in nonzero]
