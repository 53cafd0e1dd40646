"""ENAS micro space (spec asng.md §3): two cell types (normal, reduce) of 5 nodes each.

Node i of a cell picks two inputs in1, in2 ∈ {0 .. i+1} (0, 1 = the cell inputs h_{k-2}, h_{k-1}; 2.. = earlier
nodes) and two ops op1, op2; node = op1(in1) + op2(in2). The cell output is the concat of the *unused* nodes
(never the inputs) -> ReLU -> 1x1 conv -> BN. 40 categorical decisions, N = Σ(C_i - 1) = 140.

Networks (cells = 8 in the search, 20 in retraining; reduction cells at 0-based indices cells//3 and
2*cells//3, i.e. 2, 5 and 6, 13, and they count among the cells; channels double at each):

- ``EnasSupernet``: BN affine=False. An ENAS sample is one discrete architecture, so ``forward`` reads it from
  ``active`` (active[i] = [chosen index], as ``Strategy.one_hot_sample`` makes) and runs only the chosen ops on
  the chosen inputs. Weights are kept per (node, slot, input, op), as in ENAS, so every path has its own
  weights. ``gates`` are optional: when given, each branch is scaled by gate[in] * gate[op] (exactly 1 for
  one-hot gates), which gives gate gradients for the chosen entries only (none for inactive ones; ASNG needs
  none at all). A dense mixture (``active=None``) is not supported.
- ``EnasChild``: the stand-alone network (affine BN, optional auxiliary head after the second reduction,
  drop-path on non-identity branches). Its parameter names are the supernet's, so ``child_from_supernet``
  copies weights by name (the 1x1 output conv is the supernet's 5C-wide weight sliced to the unused nodes).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .nb201 import task_shapes
from .base import Architecture, Categorical, SearchSpace

OPS = ("identity", "avg_pool_3x3", "max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5")
CELL_TYPES = ("normal", "reduce")
NODES = 5
FIELDS = ("in1", "in2", "op1", "op2")
_NODE_RE = re.compile(r"n(\d+)\s*=\s*\(\s*(\S+)\s+(\S+)\s*,\s*(\S+)\s+(\S+)\s*\)")
_EXAMPLE = "normal: n0=(0 sep_conv_3x3, 1 identity) n1=(...) ... n4=(...); reduce: n0=(...) ... n4=(...)"


class EnasMicroSpace(SearchSpace):
    name = "enas_micro"

    def __init__(self, cells: int = 8):
        decisions = []
        for cell in CELL_TYPES:
            for i in range(NODES):
                inputs = tuple(str(j) for j in range(i + 2))
                decisions += [Categorical(f"{cell}.n{i}.in1", inputs), Categorical(f"{cell}.n{i}.in2", inputs),
                              Categorical(f"{cell}.n{i}.op1", OPS), Categorical(f"{cell}.n{i}.op2", OPS)]
        super().__init__(decisions)
        self.cells = cells  # of the search supernet (a space option so that presets can shrink it)

    def _rebuild(self, decisions):
        raise UserError("enas_micro: restricting the ENAS space is not supported")

    # -- architecture <-> cell genotypes --------------------------------------------------------
    def genotype(self, arch: Sequence[int]) -> dict[str, list[tuple[int, int, int, int]]]:
        """{'normal': [(in1, in2, op1, op2) per node], 'reduce': [...]} with op indices into ``OPS``."""
        arch = self.check(arch)
        per = NODES * len(FIELDS)
        return {cell: [tuple(arch[c * per + 4 * i: c * per + 4 * i + 4]) for i in range(NODES)]
                for c, cell in enumerate(CELL_TYPES)}

    def to_string(self, arch: Sequence[int]) -> str:
        parts = []
        for cell, nodes in self.genotype(arch).items():
            text = " ".join(f"n{i}=({a} {OPS[p]}, {b} {OPS[q]})" for i, (a, b, p, q) in enumerate(nodes))
            parts.append(f"{cell}: {text}")
        return "; ".join(parts)

    def from_string(self, text: str) -> Architecture:
        cells = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            if ":" not in part:
                raise UserError(f"enas_micro: {part.strip()!r} lacks 'normal:' or 'reduce:'; expected {_EXAMPLE!r}")
            cell, body = (s.strip() for s in part.split(":", 1))
            if cell not in CELL_TYPES or cell in cells:
                raise UserError(f"enas_micro: cell type {cell!r} is unknown or repeated; give 'normal:' and "
                                f"'reduce:' once each")
            nodes = _NODE_RE.findall(body)
            if len(nodes) != NODES or _NODE_RE.sub("", body).strip():
                raise UserError(f"enas_micro: the {cell} cell needs exactly {NODES} nodes n0..n4 written as "
                                f"'n0=(0 sep_conv_3x3, 1 identity)', got {body!r}")
            cells[cell] = [self._parse_node(cell, i, node) for i, node in enumerate(nodes)]
        missing = [c for c in CELL_TYPES if c not in cells]
        if missing:
            raise UserError(f"enas_micro: the string lacks the {' and '.join(missing)} cell; expected {_EXAMPLE!r}")
        return self.check([v for cell in CELL_TYPES for node in cells[cell] for v in node])

    @staticmethod
    def _parse_node(cell: str, i: int, node: tuple[str, ...]) -> tuple[int, int, int, int]:
        index, a, p, b, q = node
        if int(index) != i:
            raise UserError(f"enas_micro: {cell} nodes must be listed in order n0..n4, found n{index} at place {i}")
        ins = []
        for raw in (a, b):
            if not raw.isdigit() or int(raw) > i + 1:
                raise UserError(f"enas_micro: {cell} node n{i} input {raw!r} is out of range; use 0..{i + 1} "
                                f"(0, 1 = cell inputs, 2.. = earlier nodes)")
            ins.append(int(raw))
        for op in (p, q):
            if op not in OPS:
                raise UserError(f"enas_micro: unknown operation {op!r}; choose from {', '.join(OPS)}")
        return ins[0], ins[1], OPS.index(p), OPS.index(q)

    # -- networks -------------------------------------------------------------------------------
    def build_supernet(self, channels: int = 16, cells: int | None = None, num_classes: int = 10,
                       **ignored) -> "EnasSupernet":
        """``ignored`` swallows NB201-only options (cells_per_stage, op_style) the trainer may pass."""
        shapes = task_shapes(ignored)
        return EnasSupernet(channels, self.cells if cells is None else cells, shapes.get("num_classes", num_classes),
                            shapes.get("in_channels", 3))

    def build_child(self, arch: Sequence[int], channels: int = 36, cells: int = 20, num_classes: int = 10,
                    auxiliary: bool = True, drop_path: float = 0.0) -> "EnasChild":
        return EnasChild(self.genotype(arch), channels, cells, num_classes, auxiliary, drop_path)

    def channels_for_budget(self, arch: Sequence[int], max_params: float = 4.0e6, cells: int = 20,
                            num_classes: int = 10) -> int:
        """The largest C in [1, 128) whose child (no aux head) has ≤ max_params parameters (binary search;
        the count grows with C). Built on the meta device, so no memory is allocated."""
        def params(c):
            with torch.device("meta"):
                net = self.build_child(arch, c, cells, num_classes, auxiliary=False)
            return sum(p.numel() for p in net.parameters())

        if params(1) > max_params:
            raise UserError(f"enas_micro: even C = 1 exceeds {max_params:g} parameters; raise the budget")
        lo, hi = 1, 127                       # invariant: params(lo) ≤ budget; answer in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if params(mid) <= max_params:
                lo = mid
            else:
                hi = mid - 1
        return lo


def reduction_cells(cells: int) -> tuple[int, int]:
    return cells // 3, 2 * cells // 3


# --- operations ------------------------------------------------------------------------------------------
class FactorizedReduce(nn.Module):
    """ReLU -> two 1x1 stride-2 convs (the second offset by one pixel) -> concat -> BN: halves the resolution."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        halves = [c for c in (c_out // 2, c_out - c_out // 2) if c > 0]
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c, 1, stride=2, bias=False) for c in halves)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([conv(v) for conv, v in zip(self.convs, (x, shifted))], 1))


def relu_conv_bn(c_in: int, c_out: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


def sep_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    """(ReLU, depthwise k x k, pointwise 1x1, BN) x 2; the stride only in the first depthwise conv."""
    layers = []
    for s in (stride, 1):
        layers += [nn.ReLU(), nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
                   nn.BatchNorm2d(c, affine=affine)]
    return nn.Sequential(*layers)


def make_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    if name == "identity":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return sep_conv(c, int(name[-1]), stride, affine)
    raise UserError(f"enas_micro: unknown operation {name!r}")


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


# --- cell ----------------------------------------------------------------------------------------------
class Cell(nn.Module):
    """One cell. ``nodes`` lists per node the (in1, in2, op1, op2) choices to hold weights for: the supernet
    holds every combination, a child only its own. Branch weights live at ``slots[2*node + s][f"{j}_{op}"]``."""

    def __init__(self, nodes: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]],
                 c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, affine: bool, out_width: int):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else relu_conv_bn(c_pp, c, affine)
        self.pre1 = relu_conv_bn(c_p, c, affine)
        self.slots = nn.ModuleList()
        for ins1, ins2, ops1, ops2 in nodes:
            for ins, ops in ((ins1, ops1), (ins2, ops2)):
                self.slots.append(nn.ModuleDict({
                    f"{j}_{k}": make_op(OPS[k], c, 2 if reduction and j < 2 else 1, affine) for j in ins for k in ops}))
        self.out_weight = nn.Parameter(torch.empty(c, out_width * c, 1, 1))
        nn.init.kaiming_uniform_(self.out_weight, a=5 ** 0.5)   # nn.Conv2d's default init
        self.out_bn = nn.BatchNorm2d(c, affine=affine)
        self.c = c

    def forward(self, s0, s1, genotype, gates=None, rows=None, drop_prob=0.0):
        """``genotype``: (in1, in2, op1, op2) per node; ``rows``: its decision rows in ``gates`` (same shape)."""
        states = [self.pre0(s0), self.pre1(s1)]
        used = set()
        for i, node in enumerate(genotype):
            total = 0
            for s in (0, 1):
                j, k = node[s], node[2 + s]
                used.add(j)
                y = self.slots[2 * i + s][f"{j}_{k}"](states[j])
                if drop_prob > 0 and self.training and OPS[k] != "identity":
                    y = drop_path(y, drop_prob)
                if gates is not None:
                    y = y * (gates[rows[i][s], j] * gates[rows[i][2 + s], k])
                total = total + y
            states.append(total)
        unused = [n for n in range(NODES) if n + 2 not in used]
        return self.output(torch.cat([states[n + 2] for n in unused], 1), unused)

    def output(self, h, unused):
        """ReLU -> 1x1 conv -> BN; the supernet's 5C-wide weight is sliced to the unused nodes' columns."""
        c = self.c
        if self.out_weight.shape[1] == NODES * c:
            w = torch.cat([self.out_weight[:, n * c:(n + 1) * c] for n in unused], 1)
        else:
            w = self.out_weight
        return self.out_bn(F.conv2d(F.relu(h), w))


def unused_nodes(nodes: Sequence[tuple[int, int, int, int]]) -> list[int]:
    used = {j for a, b, _, _ in nodes for j in (a, b)}
    return [n for n in range(NODES) if n + 2 not in used]


class _Network(nn.Module):
    """Stem conv3x3 (3 -> 3C) + BN, ``cells`` cells with two reductions, GAP, linear."""

    def __init__(self, cell_nodes, out_widths, channels: int, cells: int, num_classes: int, affine: bool,
                 in_channels: int = 3):
        super().__init__()
        if cells < 3:
            raise UserError(f"enas_micro: a network needs at least 3 cells (two of them reductions), got {cells}")
        self.config = dict(channels=channels, cells=cells, num_classes=num_classes)
        self.reductions = reduction_cells(cells)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(3 * channels, affine=affine))
        c_pp = c_p = 3 * channels
        c, reduction_prev = channels, False
        self.cells = nn.ModuleList()
        self.aux_channels = None
        for index in range(cells):
            reduction = index in self.reductions
            c = c * 2 if reduction else c
            kind = CELL_TYPES[reduction]
            self.cells.append(Cell(cell_nodes[kind], c_pp, c_p, c, reduction, reduction_prev, affine,
                                   out_widths[kind]))
            c_pp, c_p, reduction_prev = c_p, c, reduction
            if index == self.reductions[1]:
                self.aux_channels = c
        self.classifier = nn.Linear(c_p, num_classes)

    def features(self, x, genotype, gates=None, rows=None, drop_prob=0.0, aux_head=None):
        s0 = s1 = self.stem(x)
        aux = None
        for index, cell in enumerate(self.cells):
            kind = CELL_TYPES[cell.reduction]
            s0, s1 = s1, cell(s0, s1, genotype[kind], gates, None if rows is None else rows[kind], drop_prob)
            if aux_head is not None and index == self.reductions[1] and self.training:
                aux = aux_head(s1)
        return self.classifier(s1.mean((2, 3))), aux


class EnasSupernet(_Network):
    """The search supernet: every (node, slot, input, op) has weights; BN affine=False; no aux head (its output
    is unused in the official search) and no drop-path."""

    def __init__(self, channels: int = 16, cells: int = 8, num_classes: int = 10, in_channels: int = 3):
        every = [(range(i + 2), range(i + 2), range(len(OPS)), range(len(OPS))) for i in range(NODES)]
        super().__init__({k: every for k in CELL_TYPES}, {k: NODES for k in CELL_TYPES}, channels, cells,
                         num_classes, affine=False, in_channels=in_channels)
        # decision rows of (in1, in2, op1, op2) of each node, to index ``gates``
        self.rows = {cell: [tuple(c * 20 + 4 * i + f for f in range(4)) for i in range(NODES)]
                     for c, cell in enumerate(CELL_TYPES)}

    def forward(self, x, gates: torch.Tensor | None = None, active: Sequence[Sequence[int]] | None = None,
                unit_gates: bool = False, inactive_grad: bool = False):
        if active is None or any(len(a) != 1 for a in active):
            raise UserError("enas_micro: the supernet runs one architecture at a time; pass active = one index per "
                            "decision (Strategy.one_hot_sample); dense or multi-op mixtures are not supported")
        arch = [a[0] for a in active]
        genotype = {cell: [tuple(arch[c * 20 + 4 * i: c * 20 + 4 * i + 4]) for i in range(NODES)]
                    for c, cell in enumerate(CELL_TYPES)}
        return self.features(x, genotype, gates, self.rows if gates is not None else None)[0]


class AuxiliaryHead(nn.Module):
    """ReLU, avgpool 5 s3 (8x8 -> 2x2), conv1x1 -> 128, BN, ReLU, conv2x2 -> 768, BN, ReLU, GAP, linear."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, 3, count_include_pad=False), nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x).mean((2, 3)))


class EnasChild(_Network):
    """A stand-alone ENAS network (affine BN). ``forward(x) -> (logits, aux_logits)``; aux_logits is None when
    there is no aux head or in eval mode. Set ``.drop_path`` per epoch (spec: 0.3 * epoch / epochs)."""

    def __init__(self, genotype: dict, channels: int, cells: int = 20, num_classes: int = 10,
                 auxiliary: bool = True, drop_path: float = 0.0):
        single = {k: [([a], [b], [p], [q]) for a, b, p, q in nodes] for k, nodes in genotype.items()}
        widths = {k: len(unused_nodes(nodes)) for k, nodes in genotype.items()}
        super().__init__(single, widths, channels, cells, num_classes, affine=True)
        self.genotype = genotype
        self.drop_path = drop_path
        self.auxiliary = AuxiliaryHead(self.aux_channels, num_classes) if auxiliary else None

    def forward(self, x):
        return self.features(x, self.genotype, drop_prob=self.drop_path, aux_head=self.auxiliary)


def child_from_supernet(space: EnasMicroSpace, supernet: EnasSupernet, arch: Sequence[int]) -> EnasChild:
    """A child (no aux head) holding the supernet's weights of ``arch``. The child's BN is affine and keeps its
    fresh (1, 0) affine parameters, so in eval mode it computes what the supernet computes."""
    genotype = space.genotype(arch)
    child = EnasChild(genotype, supernet.config["channels"], supernet.config["cells"],
                      supernet.config["num_classes"], auxiliary=False).to(next(supernet.parameters()).device)
    source = supernet.state_dict()
    state = child.state_dict()
    for key in state:
        m = re.fullmatch(r"cells\.(\d+)\.out_weight", key)
        if m:
            cell = child.cells[int(m.group(1))]
            c, unused = cell.c, unused_nodes(genotype[CELL_TYPES[cell.reduction]])
            state[key] = torch.cat([source[key][:, n * c:(n + 1) * c] for n in unused], 1)
        elif key in source:
            state[key] = source[key]
    child.load_state_dict(state)
    return child
