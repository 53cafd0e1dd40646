"""The leanest eager implementation of an NB201 child we can write: the yardstick for ``space.build_child``.

No ``MixedOp``, no ``ModuleList`` walks, no module ``__call__`` per op: each cell is straight-line code over
functional calls (``F.conv2d``, ``F.batch_norm``, ``F.avg_pool2d``), skip edges are the input itself, and the
parameters are the library child's own tensors, so both compute the same numbers (checked by ``same_output``).
Only ``op_style="advantage"`` (the default network) is written out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.spaces.nb201 import EDGES, Cell, NB201Network


def _batch_norm(bn: nn.BatchNorm2d):
    def run(h):
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
    return run


def _edge(op: nn.Module):
    """A plain function computing ``op``; None for an identity (the edge's output is its input)."""
    if isinstance(op, nn.Identity):
        return None
    if isinstance(op, nn.AvgPool2d):
        return lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=op.count_include_pad)
    conv, norm = op.conv, _batch_norm(op.bn)
    padding = conv.padding
    if op.relu:
        return lambda x: norm(F.conv2d(F.relu(x), conv.weight, conv.bias, 1, padding))
    return lambda x: norm(F.conv2d(x, conv.weight, conv.bias, 1, padding))


def _cell(cell: Cell):
    edges = [_edge(mixed.ops[0]) for mixed in cell.edges]
    assert len(edges) == len(EDGES) == 6

    def apply(fn, x):
        return x if fn is None else fn(x)

    e10, e20, e21, e30, e31, e32 = edges

    def run(x0):
        x1 = apply(e10, x0)
        x2 = apply(e20, x0) + apply(e21, x1)
        return apply(e30, x0) + apply(e31, x1) + apply(e32, x2)
    return run


class LeanChild(nn.Module):
    """``child`` (a stand-alone NB201 child) rewritten as straight-line functional code over its parameters."""

    def __init__(self, child: NB201Network):
        super().__init__()
        if child.config["op_style"] != "advantage" or any(len(ops) != 1 for ops in child.edge_ops):
            raise ValueError("LeanChild writes out op_style='advantage' children only")
        self.child = child  # holds the parameters (the optimiser sees them through this module)
        stem_conv, stem_bn = child.stem
        self.stem = lambda x: _batch_norm(stem_bn)(F.conv2d(x, stem_conv.weight, None, 1, 1))
        self.layers = [_cell(layer) if isinstance(layer, Cell) else layer for layer in child.layers]
        self.classifier = child.classifier

    def forward(self, x, *_):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return F.linear(x.mean((2, 3)), self.classifier.weight, self.classifier.bias)


def same_output(child: NB201Network, x: torch.Tensor) -> bool:
    """The lean child and the library child give bit-identical logits on ``x`` (training mode, batch BN)."""
    lean = LeanChild(child)
    state = {k: v.clone() for k, v in child.state_dict().items()}
    with torch.no_grad():
        a = child(x)
        child.load_state_dict(state)  # undo the running-statistics update of the first call
        b = lean(x)
        child.load_state_dict(state)
    return torch.equal(a, b)
