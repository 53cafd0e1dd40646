"""The gated mixed operation that every supernet is built from.

``MixedOp`` holds the candidate ops of one decision and computes ``sum_k gate[k] * op_k(x)`` over the ops
listed in ``active`` only. With a one-hot gate and ``active=[k]`` that is the cost of one child
(sparse propagation); with a softmax gate and every op active it is DARTS-style dense propagation.
Multiplying by the gate is what makes autograd return ``dL/dgate[k] = <dL/de, op_k(x)>``.

``active`` is a host-side list computed once per step by the strategy: reading sampled indices back from the
device inside the forward would cost a synchronisation per edge.

What keeps a step near the cost of the networks it stands for (``benchmarks/step_cost.py``):

- one-hot gates (``unit_gates``): the op's output is returned as it is, and ``dL/dgate = <dL/dout, y>`` is taken
  where it costs least. An op ending in a training-mode batch norm (``forward_unit_gated``, or an
  ``nn.Sequential`` whose last module is one) gets it from the BN's own backward, which computes the per-channel
  ``sum(dL/dout * x_hat)`` anyway (``UnitGatedBatchNorm``: no dot product, nothing saved that the BN does not
  save); an ``nn.AvgPool2d`` as ``<dL/dx, x>`` on the input it saves anyway (``UnitGatedAvgPool``); any other op
  through ``UnitGate``, which keeps ``y`` for one dot product. The forward values and the weights' gradients are
  those of the child; ``dL/dgate`` equals ``<dL/dout, y>`` up to float rounding;
- several ops weighted by real gates (dense, or a few sampled ops): ``WeightedSum`` is one autograd node per
  edge instead of a select, a multiplication and an addition per op, and takes ``dL/dgate[k]`` as one dot
  product instead of materialising ``dL/dout * y_k`` and summing it;
- ``none`` (an op marked ``is_zero``, or a class named ``Zero``) never runs beside other ops: its output is 0,
  so it adds nothing to the sum and its gate's gradient ``<dL/dout, 0>`` is 0;
- ops that begin with the same ReLU of the edge's input (an ``nn.Sequential`` whose first module is
  ``nn.ReLU``) share one ReLU when several of them run;
- an op with forward hooks is called as a module (``op(x)``), never taken apart, so that its hooks see its
  output (a ``none`` beside other ops is still skipped: there is nothing to see).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules import module as _modules


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


class UnitGatedBatchNorm(torch.autograd.Function):
    """``batch_norm(h) * gate`` (training mode) for a gate whose value is 1. The forward is the batch norm's own;
    its backward also returns the per-channel ``sum(dL/dout * x_hat)`` (and ``sum(dL/dout)``), which is what
    ``dL/dgate = <dL/dout, out> = sum_c weight_c * dweight_c + bias_c * dbias_c`` (weight 1, bias 0 without
    affine) needs."""

    @staticmethod
    def forward(ctx, h, gate, weight, bias, running_mean, running_var, momentum, eps):
        out, mean, invstd = torch.ops.aten.native_batch_norm(h, weight, bias, running_mean, running_var, True,
                                                             momentum, eps)
        ctx.save_for_backward(h, weight, bias, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, bias, mean, invstd = ctx.saved_tensors
        need_h, need_gate, need_weight, need_bias = ctx.needs_input_grad[:4]
        mask = [need_h, need_gate or need_weight, (need_gate and bias is not None) or need_bias]
        grad_h, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out, h, weight, None, None, mean, invstd, True, ctx.eps, mask)
        grad_gate = None
        if need_gate:
            grad_gate = grad_weight.sum() if weight is None else torch.dot(weight, grad_weight)
            if bias is not None:
                grad_gate = grad_gate + torch.dot(bias, grad_bias)
        return (grad_h if need_h else None, grad_gate, grad_weight if need_weight else None,
                grad_bias if need_bias else None, None, None, None, None)


def unit_gated_batch_norm(bn: nn.modules.batchnorm._BatchNorm, h: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``bn(h) * gate`` for a one-hot gate (value 1): in training mode ``UnitGatedBatchNorm``, with the same values
    and running-statistics update as ``bn(h)``; in eval mode ``UnitGate`` over ``bn(h)``. An op whose output is a
    BN's output can offer ``forward_unit_gated(x, gate)`` built on this; ``MixedOp`` then uses it for one-hot
    samples."""
    if not bn.training:
        return UnitGate.apply(bn(h), gate)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm
            momentum = 1.0 / float(bn.num_batches_tracked)
    stats = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return UnitGatedBatchNorm.apply(h, gate, bn.weight, bn.bias, *stats, momentum, bn.eps)


class UnitGatedAvgPool(torch.autograd.Function):
    """``avg_pool2d(x) * gate`` for a gate whose value is 1: ``dL/dgate = <dL/dout, P x> = <P^T dL/dout, x>``,
    a dot product of the pool's own input gradient with the input it keeps anyway (no output saved)."""

    @staticmethod
    def forward(ctx, x, gate, pool: nn.AvgPool2d):
        ctx.save_for_backward(x)
        ctx.pool = pool
        return pool(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        p = ctx.pool
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)
        grad_x = torch.ops.aten.avg_pool2d_backward(grad_out, x, pair(p.kernel_size), pair(p.stride or p.kernel_size),
                                                   pair(p.padding), p.ceil_mode, p.count_include_pad,
                                                   p.divisor_override)
        grad_gate = torch.dot(grad_x.reshape(-1), x.reshape(-1)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_gate, None


def hooked(op: nn.Module) -> bool:
    """``op`` (or every module) has forward hooks: it must then run as ``op(x)``, never taken apart or skipped."""
    return bool(op._forward_hooks or op._forward_pre_hooks or _modules._global_forward_hooks
                or _modules._global_forward_pre_hooks)


def _unit_gated_method(op: nn.Module):
    """``op.forward_unit_gated`` if the op (or its class) defines it, else None, without ``Module.__getattr__``'s
    slow failing lookup."""
    if "forward_unit_gated" in op.__dict__ or hasattr(type(op), "forward_unit_gated"):
        return op.forward_unit_gated
    return None


def unit_gated(op: nn.Module, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``op(x) * gate`` for a one-hot gate (value 1), with ``dL/dgate`` where it costs least (module docstring)."""
    if hooked(op):
        return UnitGate.apply(op(x), gate)
    special = _unit_gated_method(op)
    if special is not None:
        return special(x, gate)
    if type(op) is nn.AvgPool2d and x.dim() == 4:
        return UnitGatedAvgPool.apply(x, gate, op)
    if (isinstance(op, nn.Sequential) and len(op) > 1 and isinstance(op[-1], nn.modules.batchnorm._BatchNorm)
            and not hooked(op[-1])):
        h = x
        for module in list(op)[:-1]:
            h = module(h)
        return unit_gated_batch_norm(op[-1], h, gate)
    return UnitGate.apply(op(x), gate)


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
        sharing = [self.relu_first[k] and not hooked(self.ops[k]) for k in ks]
        shared = sum(sharing) > 1
        relu_x = torch.relu(x) if shared else None
        outputs = []
        for k, share in zip(ks, sharing):
            op = self.ops[k]
            if shared and share:
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
        if gate is not None and not unit_gates:
            out = WeightedSum.apply(gate, ks, *self._outputs(x, ks))
        else:
            ys = [unit_gated(self.ops[k], x, gate[k]) for k in ks] if gate is not None else self._outputs(x, ks)
            out = ys[0]
            for y in ys[1:]:
                out = out + y
        if inactive_grad and gate is not None and gate.requires_grad:
            # one-hot samples: the ops that did not run are those whose gate is 0 (no host-to-device index copy)
            out = InactiveGates.apply(out, gate, (gate.detach() == 0).to(gate.dtype))
        return out


def use_channels_last(model: nn.Module) -> nn.Module:
    """Lay out ``model``'s 4-D weights, and the images handed to its ``forward``, channels-last (NHWC).

    On CPU, mkldnn runs depthwise convolutions and pools much faster in that layout (the DARTS and ENAS ops are
    made of them: a dense DARTS supernet step is 1.78x faster, a DARTS child's 1.37x; ``benchmarks/space_step_cost.py
    --space darts``). Not measured on a GPU. Results differ from the default layout by float rounding only.
    """
    model.to(memory_format=torch.channels_last)

    def images_to_nhwc(module, args):
        if args and torch.is_tensor(args[0]) and args[0].dim() == 4:
            return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        return None

    model.register_forward_pre_hook(images_to_nhwc)
    return model


def active_from_gates(gates: torch.Tensor) -> list[list[int]]:
    """Indices of the non-zero gate entries per row, read back to the host in one transfer."""
    nonzero = (gates.detach() != 0).cpu().tolist()
    return [[k for k, on in enumerate(row) if on] for row in nonzero]
