"""NAS-Bench-201: a 4-node cell with 6 edges, one operation per edge, stacked into a 3-stage network.

Two networks, chosen by ``op_style``:

- ``"advantage"`` (default): the AdvantageNAS code's network (spec advantagenas.md §3, pitfall 2), which
  matches its reported numbers: conv ops are Conv(bias) -> BN(affine=False) (the official code computes a
  ReLU and discards it), avg-pool counts padding, the reduction shortcut pools 3x3 with stride 2, and there
  is no BN-ReLU before the global pool.
- ``"nb201"``: NB201's own TinyNetwork (D-X-Y/AutoDL-Projects ``cell_infers/tiny_network.py``), also the
  supernet ABS trains (AngleNAS ``search_model_spos.py``): ReLU -> Conv(no bias) -> BN ops, avg-pool excludes
  padding, the reduction shortcut is avgpool 2x2 -> conv1x1, and ``lastact`` = BN(affine) -> ReLU precedes
  the pool. Without ``lastact`` the residual sums grow through the 15 cells (initial loss ~1e7 for the
  all-skip cell at C=16, N=5); with it, ~2.3. The all-nor_conv_3x3 child has NB201's 1,531,546 parameters.

``op_bn_affine`` sets the affine flag of the BNs inside the cell ops; by default False for "advantage" and
True for "nb201" (NB201's trained networks). ABS's supernet is "nb201" with ``op_bn_affine=False``; the stem,
reduction and ``lastact`` BNs are affine in every case, as in both official codes.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..supernet import MixedOp, UnitGate, hooked, unit_gated_batch_norm
from .base import Architecture, Categorical, SearchSpace

OPS_4 = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
OPS_5 = ("none",) + OPS_4
# (target node, source node) of each edge, in the order of the NB201 string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
_NODE_RE = re.compile(r"^\|([^|]+(?:\|[^|]+)*)\|$")


def task_shapes(config: dict) -> dict:
    """The task's ``input_shape`` and ``num_outputs`` as the network's ``in_channels`` and ``num_classes``."""
    config = dict(config)
    shape = config.pop("input_shape", None)
    if shape is not None:
        if len(shape) != 3:
            raise UserError(f"this space builds image networks; the task's inputs have shape {tuple(shape)}")
        config["in_channels"] = shape[0]
    if "num_outputs" in config:
        config["num_classes"] = config.pop("num_outputs")
    return config


class NB201Space(SearchSpace):
    name = "nb201"

    def __init__(self, ops: Sequence[str] = OPS_4, per_edge: Sequence[Sequence[str]] | None = None):
        per_edge = per_edge or [ops] * len(EDGES)
        for choices in per_edge:
            for op in choices:
                if op not in OPS_5:
                    raise UserError(f"nb201: unknown operation {op!r}; choose from {', '.join(OPS_5)}")
        super().__init__([Categorical(f"edge{t}{s}", tuple(c)) for (t, s), c in zip(EDGES, per_edge)])

    def _rebuild(self, decisions):
        return NB201Space(per_edge=[d.choices for d in decisions])

    def build_supernet(self, **config) -> "NB201Network":
        return NB201Network([d.choices for d in self.decisions], **task_shapes(config))

    def build_child(self, arch: Sequence[int], **config) -> "NB201Network":
        return NB201Network([[op] for op in self.op_names(arch)], **task_shapes(config))

    def benchmark(self, arch: Sequence[int]) -> dict:
        """NB201 test accuracies and ranks of a cell (the tabular evaluator)."""
        from ..tabular.nb201 import lookup

        return lookup(self.to_string(arch))

    def op_names(self, arch: Sequence[int]) -> list[str]:
        return [d.choices[v] for d, v in zip(self.decisions, self.check(arch))]

    def to_string(self, arch: Sequence[int]) -> str:
        names = self.op_names(arch)
        nodes = []
        for target in (1, 2, 3):
            nodes.append("|" + "|".join(f"{names[i]}~{s}" for i, (t, s) in enumerate(EDGES) if t == target) + "|")
        return "+".join(nodes)

    def from_string(self, text: str) -> Architecture:
        example = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != 3 or not all(_NODE_RE.match(n) for n in nodes):
            raise UserError(f"nb201: {text!r} is not an NB201 architecture string; expected 3 nodes like {example}")
        arch = []
        for target, node in zip((1, 2, 3), nodes):
            items = node.strip("|").split("|")
            if len(items) != target:
                raise UserError(f"nb201: node {target} of {text!r} needs {target} inputs, got {len(items)}; "
                                f"expected e.g. {example}")
            for source, item in enumerate(items):
                op, _, src = item.partition("~")
                if src != str(source):
                    raise UserError(f"nb201: {item!r} in {text!r} should read '{op}~{source}' (inputs in order)")
                decision = self.decisions[EDGES.index((target, source))]
                if op not in decision.choices:
                    raise UserError(f"nb201: {op!r} is not a choice on edge {source}->{target}; "
                                    f"choose from {', '.join(decision.choices)}")
                arch.append(decision.choices.index(op))
        # Parsing went node by node; EDGES is in the same order, so arch already lines up.
        return tuple(arch)


# --- operations ------------------------------------------------------------------------------------
class Zero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


class ConvBN(nn.Module):
    def __init__(self, c: int, k: int, style: str, affine: bool):
        super().__init__()
        self.relu = style == "nb201"
        self.conv = nn.Conv2d(c, c, k, padding=k // 2, bias=not self.relu)
        self.bn = nn.BatchNorm2d(c, affine=affine)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x) if self.relu else x))

    def forward_unit_gated(self, x, gate):
        """``self(x) * gate`` for a one-hot gate: the gate's gradient comes from the BN's own backward, so the op's
        output is not kept for it (``oneshot.supernet.unit_gated_batch_norm``)."""
        h = self.conv(F.relu(x) if self.relu else x)
        if hooked(self.bn):
            return UnitGate.apply(self.bn(h), gate)
        return unit_gated_batch_norm(self.bn, h, gate)


def make_op(name: str, c: int, style: str, affine: bool) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ConvBN(c, 1, style, affine)
    if name == "nor_conv_3x3":
        return ConvBN(c, 3, style, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=style != "nb201")
    raise UserError(f"nb201: unknown operation {name!r}")


# --- network ---------------------------------------------------------------------------------------
class Cell(nn.Module):
    def __init__(self, c: int, edge_ops: Sequence[Sequence[str]], style: str, affine: bool):
        super().__init__()
        self.edges = nn.ModuleList(MixedOp([make_op(op, c, style, affine) for op in ops]) for ops in edge_ops)

    def forward(self, x, gates, active, unit_gates=False, inactive_grad=False):
        nodes = [x]
        for target in (1, 2, 3):
            total = None
            for i, (t, s) in enumerate(EDGES):
                if t != target:
                    continue
                y = self.edges[i](nodes[s], None if gates is None else gates[i],
                                  None if active is None else active[i], unit_gates, inactive_grad)
                total = y if total is None else total + y
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """ReLU-conv3x3 s2-BN-ReLU-conv3x3-BN, shortcut avgpool -> conv1x1. The shortcut pools 3x3 with stride 2
    in the AdvantageNAS code and 2x2 with stride 2 in NB201's ``ResNetBasicblock``."""

    def __init__(self, c_in: int, c_out: int, style: str = "advantage"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        pool = nn.AvgPool2d(2, 2) if style == "nb201" else nn.AvgPool2d(3, 2, 1)
        self.shortcut = nn.Sequential(pool, nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class NB201Network(nn.Module):
    """The NB201 macro network. Each edge holds the ops listed for it in ``edge_ops``.

    The supernet lists every choice of the space on every edge; a stand-alone child lists one op per edge.
    ``forward(x, gates, active, unit_gates, inactive_grad)``: ``gates`` (6, K) is shared by all cells; see
    ``MixedOp``. ``active`` is either one list of op indices per edge, shared by all cells (one architecture
    for the whole network), or one such list per cell, in network order (``len == 3 * cells_per_stage``):
    every cell runs its own ops, as ABS's NB201 supernet training samples them (``oneshot.abs_sampling``).
    """

    def __init__(self, edge_ops: Sequence[Sequence[str]], channels: int = 16, cells_per_stage: int = 5,
                 num_classes: int = 10, op_style: str = "advantage", op_bn_affine: bool | None = None,
                 in_channels: int = 3):
        super().__init__()
        if op_style not in ("advantage", "nb201"):
            raise UserError(f"nb201: op_style must be 'advantage' or 'nb201', got {op_style!r}")
        if op_bn_affine is None:
            op_bn_affine = op_style == "nb201"
        self.edge_ops = [list(ops) for ops in edge_ops]
        self.config = dict(channels=channels, cells_per_stage=cells_per_stage, num_classes=num_classes,
                           op_style=op_style, op_bn_affine=bool(op_bn_affine), in_channels=in_channels)
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers: list[nn.Module] = []
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualReduction(c, 2 * c, op_style))
                c *= 2
            layers.extend(Cell(c, edge_ops, op_style, bool(op_bn_affine)) for _ in range(cells_per_stage))
        self.layers = nn.ModuleList(layers)
        self.num_cells = 3 * cells_per_stage
        # NB201's final BN-ReLU; the AdvantageNAS network has none (and no "lastact" keys in its state dict)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()) if op_style == "nb201" else None
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x, gates: torch.Tensor | None = None, active: Sequence | None = None,
                unit_gates: bool = False, inactive_grad: bool = False):
        cell_active = self._per_cell(active)
        x = self.stem(x)
        if cell_active is None:  # one architecture for every cell: the common path, unchanged
            for layer in self.layers:
                x = layer(x, gates, active, unit_gates, inactive_grad) if isinstance(layer, Cell) else layer(x)
        else:
            cells = iter(cell_active)
            for layer in self.layers:
                x = layer(x, gates, next(cells), unit_gates, inactive_grad) if isinstance(layer, Cell) else layer(x)
        if self.lastact is not None:
            x = self.lastact(x)
        return self.classifier(x.mean((2, 3)))

    def _per_cell(self, active) -> Sequence | None:
        """``active`` itself when it holds one per-edge list per cell, None when it is shared by all cells.
        Per cell, an entry's first element is a list of op indices; shared, it is an op index."""
        if not active or not isinstance(active[0], (list, tuple)) or not active[0] \
                or not isinstance(active[0][0], (list, tuple)):
            return None
        if len(active) != self.num_cells:
            raise UserError(f"nb201: per-cell 'active' needs one entry per cell ({self.num_cells}), got {len(active)}")
        return active


def child_from_supernet(space: NB201Space, supernet: NB201Network, arch: Sequence[int]) -> NB201Network:
    """A stand-alone child whose weights are the supernet's weights of the chosen ops."""
    arch = space.check(arch)
    child = space.build_child(arch, **supernet.config).to(next(supernet.parameters()).device)
    pattern = re.compile(r"(.*\.edges\.(\d+)\.ops\.)(\d+)(\..*)")
    state = {}
    for key, value in supernet.state_dict().items():
        m = pattern.fullmatch(key)
        if m is None:
            state[key] = value
        elif int(m.group(3)) == arch[int(m.group(2))]:
            state[m.group(1) + "0" + m.group(4)] = value
    child.load_state_dict(state)
    return child
