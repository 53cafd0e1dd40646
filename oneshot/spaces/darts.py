"""The DARTS CNN space (Liu et al. 2019), searched by SNAS (spec snas.md §1-§3): two cell types of 14 edges.

A cell has inputs x0, x1 (the two previous cells' outputs after a 1x1 ReLU-conv-BN, or FactorizedReduce for x0
after a reduction), intermediate nodes x2..x5 and one edge i -> j for every i < j; a node sums its incoming edges
and the cell outputs concat(x2..x5). The space has 28 categorical decisions, ``normal_j_i`` then ``reduce_j_i``
(edge from node i into node j, in DARTS order), each over the 8 ops of ``OPS``. An architecture is one op index
per edge; ``none`` means "no edge", so a node may have 0..j inputs (SNAS's edge-all cells) and a DARTS top-2 cell
is the special case of exactly two non-``none`` inputs per node.

Strings are the usual DARTS genotype text, ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4,
5], reduce=[...], reduce_concat=[2, 3, 4, 5])``, read with ``ast`` (never ``eval``). A cell lists either 8 entries
(two per node, DARTS) or 14 (one per edge, ``none`` included, SNAS edge-all); entries are grouped into nodes by
position, so both forms name the same architecture. Released cells are available by name (``GENOTYPES``).

Networks (reductions at cells L//3 and 2L//3, channels doubling there; stem conv3x3 -> 3C + BN):
- ``DartsSupernet``: every edge a ``MixedOp`` over its choices, BN affine=False (pools keep their BN), gate rows
  0-13 shared by all normal cells and 14-27 by all reduce cells (so dL/dgate sums over the cells of a type), and
  optional drop-path on every edge output (SNAS search: 0.3, identity not exempt, spec pitfall 4).
- ``DartsChild``: the evaluation network: affine BN, pools with BN (SNAS code; DARTS's own evaluation pools have
  none: ``pool_bn=False``), auxiliary head after cell 2L/3, drop-path exempting identity edges, input-less nodes
  are zero. ``forward(x) -> (logits, aux)``; aux is None in eval mode or without the head.

``op_costs`` gives the resource costs of spec §2 (size, FLOPs, MAC) per (cell, edge, op) for SNAS's penalty.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError
from ..supernet import MixedOp
from .base import Architecture, Categorical, SearchSpace
from .enas_micro import FactorizedReduce, drop_path, relu_conv_bn, sep_conv

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
CELL_TYPES = ("normal", "reduce")
FIRST_NODE, LAST_NODE = 2, 5
# (target, source) of the 14 edges of a cell, in DARTS order (node by node, sources ascending)
EDGES = tuple((j, i) for j in range(FIRST_NODE, LAST_NODE + 1) for i in range(j))
CONCAT = tuple(range(FIRST_NODE, LAST_NODE + 1))
RESOURCES = ("size", "flops", "mac")
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_EXAMPLE = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5], "
            "reduce=[...], reduce_concat=[2, 3, 4, 5]) or a released name (" + ", ".join(
                ("snas_mild", "snas_moderate", "snas_aggressive", "darts_v1", "darts_v2")) + ")")


# --- genotypes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Genotype:
    """A genotype as written: per cell type the (op, source) entries in their listed order (8 or 14)."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __str__(self) -> str:
        def entries(cell):
            return "[" + ", ".join(f"({op!r}, {src})" for op, src in cell) + "]"

        return (f"Genotype(normal={entries(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={entries(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


def _genotype(normal, reduce) -> Genotype:
    return Genotype(tuple(normal), CONCAT, tuple(reduce), CONCAT)


# Released cells. SNAS: the *_edge_all genotypes of SNAS-Series/SNAS-Series SNAS/genotypes.py (entries in their
# released order); DARTS: quark0/darts cnn/genotypes.py (V2 is the 2nd-order cell of the paper).
GENOTYPES: dict[str, Genotype] = {
    "snas_mild": _genotype(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 1), ("none", 2),
         ("skip_connect", 0), ("skip_connect", 1), ("none", 3), ("none", 2), ("skip_connect", 0),
         ("sep_conv_3x3", 1), ("none", 4), ("none", 3), ("none", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("none", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
         ("none", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("none", 3), ("max_pool_3x3", 0),
         ("dil_conv_5x5", 2), ("none", 1), ("none", 3), ("none", 4)]),
    "snas_moderate": _genotype(
        [("dil_conv_5x5", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("skip_connect", 1), ("none", 2),
         ("skip_connect", 0), ("none", 3), ("none", 2), ("skip_connect", 1), ("sep_conv_3x3", 0),
         ("dil_conv_5x5", 1), ("none", 4), ("none", 3), ("none", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_5x5", 0), ("none", 2), ("dil_conv_5x5", 1),
         ("none", 3), ("none", 2), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1), ("none", 4), ("none", 3), ("none", 2),
         ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)]),
    "snas_aggressive": _genotype(
        [("sep_conv_5x5", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1), ("none", 2),
         ("dil_conv_5x5", 1), ("skip_connect", 0), ("none", 2), ("none", 3), ("skip_connect", 0),
         ("dil_conv_5x5", 1), ("none", 2), ("none", 3), ("none", 4)],
        [("sep_conv_5x5", 0), ("none", 1), ("sep_conv_5x5", 0), ("none", 1), ("none", 2), ("none", 0),
         ("none", 1), ("none", 2), ("none", 3), ("none", 0), ("none", 1), ("none", 2), ("none", 3), ("none", 4)]),
    "darts_v1": _genotype(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0), ("max_pool_3x3", 0),
         ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    "darts_v2": _genotype(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1), ("max_pool_3x3", 0),
         ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
}


def released(name: str) -> Genotype | None:
    """A released genotype by name, case-insensitive ('SNAS_mild_edge_all' and 'DARTS' (= V2) work too)."""
    key = name.strip().lower().removesuffix("_edge_all")
    return GENOTYPES.get({"darts": "darts_v2"}.get(key, key))


def parse_genotype(text: str) -> Genotype:
    """Read DARTS genotype text with ``ast`` (literals and ``range(a, b)`` only; nothing is evaluated)."""
    short = text.strip() if len(text.strip()) < 80 else text.strip()[:77] + "..."
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise UserError(f"darts: {short!r} is not genotype text; expected {_EXAMPLE}") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "Genotype"):
        raise UserError(f"darts: {short!r} is not a Genotype(...); expected {_EXAMPLE}")
    if len(tree.args) > len(_FIELDS):
        raise UserError(f"darts: a Genotype has 4 fields ({', '.join(_FIELDS)}), got {len(tree.args)} values")
    fields = dict(zip(_FIELDS, tree.args))
    for keyword in tree.keywords:
        if keyword.arg not in _FIELDS or keyword.arg in fields:
            raise UserError(f"darts: Genotype field {keyword.arg!r} is unknown or repeated; use {', '.join(_FIELDS)}")
        fields[keyword.arg] = keyword.value
    missing = [f for f in _FIELDS if f not in fields]
    if missing:
        raise UserError(f"darts: the genotype lacks {', '.join(missing)}; expected {_EXAMPLE}")
    return Genotype(_entries(fields["normal"], "normal"), _concat(fields["normal_concat"], "normal"),
                    _entries(fields["reduce"], "reduce"), _concat(fields["reduce_concat"], "reduce"))


def _literal(node: ast.AST, what: str):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise UserError(f"darts: {what} must be a literal list, got {ast.unparse(node)!r}") from None


def _entries(node: ast.AST, cell: str) -> tuple[tuple[str, int], ...]:
    value = _literal(node, f"the {cell} cell")
    if not isinstance(value, (list, tuple)):
        raise UserError(f"darts: the {cell} cell must be a list of (op, source) pairs, got {value!r}")
    entries = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            raise UserError(f"darts: {item!r} in the {cell} cell is not an (op, source) pair like ('sep_conv_3x3', 0)")
        if item[0] not in OPS:
            raise UserError(f"darts: unknown operation {item[0]!r} in the {cell} cell; choose from {', '.join(OPS)}")
        entries.append((item[0], item[1]))
    return tuple(entries)


def _concat(node: ast.AST, cell: str) -> tuple[int, ...]:
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and all(isinstance(a, ast.Constant) and type(a.value) is int for a in node.args)):
        value = list(range(*(a.value for a in node.args)))
    else:
        value = _literal(node, f"{cell}_concat")
    if not isinstance(value, (list, tuple)) or tuple(value) != CONCAT:
        raise UserError(f"darts: {cell}_concat must be [2, 3, 4, 5] (every intermediate node), got {value!r}")
    return CONCAT


def cell_edges(entries: Sequence[tuple[str, int]], cell: str) -> dict[tuple[int, int], str]:
    """{(target, source): op} of the non-``none`` edges. 8 entries = two per node (DARTS), 14 = one per edge."""
    if len(entries) == 8:
        sizes = [2] * 4
    elif len(entries) == len(EDGES):
        sizes = [j for j in range(FIRST_NODE, LAST_NODE + 1)]
    else:
        raise UserError(f"darts: the {cell} cell lists {len(entries)} entries; give 8 (two per node, DARTS) or 14 "
                        f"(one per edge, 'none' included, edge-all)")
    edges: dict[tuple[int, int], str] = {}
    start = 0
    for target, size in zip(range(FIRST_NODE, LAST_NODE + 1), sizes):
        seen = set()
        for op, source in entries[start:start + size]:
            if not 0 <= source < target:
                raise UserError(f"darts: ({op!r}, {source}) feeds node {target} of the {cell} cell; its source must "
                                f"be 0..{target - 1}")
            if source in seen and (op != "none" or len(entries) == len(EDGES)):
                raise UserError(f"darts: node {target} of the {cell} cell lists source {source} twice")
            seen.add(source)
            if op != "none":
                if (target, source) in edges:
                    raise UserError(f"darts: node {target} of the {cell} cell lists source {source} twice")
                edges[(target, source)] = op
        start += size
    return edges


def edges_to_entries(edges: dict[tuple[int, int], str]) -> tuple[tuple[str, int], ...]:
    """The canonical listing of a cell: the DARTS form when every node has exactly two inputs, else edge-all."""
    inputs = {j: sorted(i for (t, i) in edges if t == j) for j in range(FIRST_NODE, LAST_NODE + 1)}
    if all(len(v) == 2 for v in inputs.values()):
        return tuple((edges[(j, i)], i) for j in inputs for i in inputs[j])
    return tuple((edges.get((j, i), "none"), i) for j, i in EDGES)


# --- derivation (pure functions of the logits) ---------------------------------------------------------------
def derive_edge_all(logits: torch.Tensor) -> Architecture:
    """SNAS's rule (spec §3): on every edge the argmax over all its choices, ``none`` included.

    ``logits``: (28, K), entries that are not choices of a (restricted) decision set to -inf."""
    return tuple(int(k) for k in logits.detach().argmax(-1).tolist())


def derive_top2(logits: torch.Tensor, choices: Sequence[Sequence[str]]) -> Architecture:
    """The DARTS rule: per node keep the two incoming edges whose strongest non-``none`` op has the largest
    softmax weight, with that op; every other edge gets ``none``. ``choices[d]``: the op names of decision d."""
    probs = torch.softmax(logits.detach().double(), -1)
    arch = []
    for row, names in enumerate(choices):
        if "none" not in names:
            raise UserError(f"darts: top-2 derivation needs 'none' on every edge; decision {row} of this restricted "
                            f"space lacks it (derive edge-all instead)")
    for cell in range(len(CELL_TYPES)):
        for target in range(FIRST_NODE, LAST_NODE + 1):
            rows = [cell * len(EDGES) + e for e, (t, _) in enumerate(EDGES) if t == target]
            strongest = {}  # row -> (weight, op index) of its best non-none op
            for row in rows:
                real = [k for k, op in enumerate(choices[row]) if op != "none"]
                k = max(real, key=lambda k: float(probs[row, k])) if real else None
                strongest[row] = (float(probs[row, k]) if real else -1.0, k)
            keep = sorted(rows, key=lambda r: -strongest[r][0])[:2]  # stable: ties go to the lower source
            for row in rows:
                k = strongest[row][1]
                arch.append(k if row in keep and k is not None else list(choices[row]).index("none"))
    return tuple(arch)


# --- the space -----------------------------------------------------------------------------------------------
class DARTSSpace(SearchSpace):
    name = "darts"

    def __init__(self, per_edge: Sequence[Sequence[str]] | None = None, cells: int = 8, drop_path: float = 0.0):
        """``cells`` and ``drop_path``: the search supernet's depth and edge drop-path (space options, as in
        enas_micro, so that presets set them; SNAS searches with 8 cells and drop-path 0.3)."""
        self.cells, self.drop_path = cells, drop_path
        per_edge = per_edge or [OPS] * (len(CELL_TYPES) * len(EDGES))
        for choices in per_edge:
            for op in choices:
                if op not in OPS:
                    raise UserError(f"darts: unknown operation {op!r}; choose from {', '.join(OPS)}")
        names = [f"{cell}_{j}_{i}" for cell in CELL_TYPES for j, i in EDGES]
        super().__init__([Categorical(n, tuple(c)) for n, c in zip(names, per_edge)])

    def _rebuild(self, decisions):
        return DARTSSpace([d.choices for d in decisions], self.cells, self.drop_path)

    def op_names(self, arch: Sequence[int]) -> list[str]:
        return [d.choices[v] for d, v in zip(self.decisions, self.check(arch))]

    # -- strings ------------------------------------------------------------------------------------------
    def genotype(self, arch: Sequence[int]) -> Genotype:
        names = self.op_names(arch)
        cells = []
        for c in range(len(CELL_TYPES)):
            ops = names[c * len(EDGES):(c + 1) * len(EDGES)]
            cells.append(edges_to_entries({edge: op for edge, op in zip(EDGES, ops) if op != "none"}))
        return Genotype(cells[0], CONCAT, cells[1], CONCAT)

    def to_string(self, arch: Sequence[int]) -> str:
        return str(self.genotype(arch))

    def from_genotype(self, genotype: Genotype) -> Architecture:
        arch = []
        for c, cell in enumerate(CELL_TYPES):
            edges = cell_edges(getattr(genotype, cell), cell)
            for e, edge in enumerate(EDGES):
                decision = self.decisions[c * len(EDGES) + e]
                op = edges.get(edge, "none")
                if op not in decision.choices:
                    raise UserError(f"darts: {op!r} is not a choice of {decision.name} in this space "
                                    f"({', '.join(decision.choices)})")
                arch.append(decision.choices.index(op))
        return tuple(arch)

    def from_string(self, text: str) -> Architecture:
        genotype = released(text)
        return self.from_genotype(genotype if genotype is not None else parse_genotype(text))

    # -- networks -----------------------------------------------------------------------------------------
    def build_supernet(self, input_shape: Sequence[int] = (3, 32, 32), num_outputs: int = 10, channels: int = 16,
                       cells: int | None = None, drop_path: float | None = None, **ignored) -> "DartsSupernet":
        """``ignored`` swallows other spaces' options (cells_per_stage, op_style); ``num_classes`` is read as
        ``num_outputs``. ``drop_path``: the constant drop probability of every edge output in training mode;
        ``cells`` and ``drop_path`` default to the space's options."""
        num_outputs = ignored.get("num_classes", num_outputs)
        return DartsSupernet([d.choices for d in self.decisions], input_shape, num_outputs, channels,
                             self.cells if cells is None else cells,
                             self.drop_path if drop_path is None else drop_path)

    def build_child(self, arch: Sequence[int], channels: int = 36, cells: int = 20, auxiliary: bool = True,
                    drop_path: float = 0.0, input_shape: Sequence[int] = (3, 32, 32), num_outputs: int = 10,
                    pool_bn: bool = True, **ignored) -> "DartsChild":
        num_outputs = ignored.get("num_classes", num_outputs)
        return DartsChild(self.op_names(arch), input_shape, num_outputs, channels, cells, auxiliary, drop_path,
                          pool_bn)

    def derive_top2(self, logits: torch.Tensor) -> Architecture:
        return derive_top2(logits, [d.choices for d in self.decisions])

    # -- resource costs (spec §2) -------------------------------------------------------------------------
    def op_costs(self, resource: str, channels: int = 16, cells: int = 8, input_size: int = 32) -> torch.Tensor:
        """(cells, 28, max_choices): the ``resource`` cost of choice k on decision d in cell g of the supernet
        (rows of the other cell type are 0, as are padded choices). See ``op_cost`` for the formulas."""
        if resource not in RESOURCES:
            raise UserError(f"darts: unknown resource {resource!r}; choose from {', '.join(RESOURCES)}")
        table = torch.zeros(cells, len(self.decisions), self.max_choices, dtype=torch.float64)
        for g, (c, size, reduction) in enumerate(cell_shapes(channels, cells, input_size)):
            offset = len(EDGES) if reduction else 0
            for e, (target, source) in enumerate(EDGES):
                stride = 2 if reduction and source < 2 else 1
                # a reduction cell's intermediate nodes are already at the output resolution
                h = -(-size // 2) if reduction and source >= 2 else size
                for k, op in enumerate(self.decisions[offset + e].choices):
                    table[g, offset + e, k] = op_cost(op, resource, c, h, stride)
        return table

    def resource_table(self, resource: str, channels: int = 16, cells: int | None = None,
                       input_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """What SNAS's penalty needs: (costs (cells, 28, K), weight (cells,)), the weight of a cell being 1 / the
        number of cells of its type (the official code's /6 and /2 at 8 cells, spec pitfall 3)."""
        cells = self.cells if cells is None else cells
        kinds = [reduction for _, _, reduction in cell_shapes(channels, cells, input_size)]
        weight = torch.tensor([1.0 / kinds.count(r) for r in kinds], dtype=torch.float64)
        return self.op_costs(resource, channels, cells, input_size), weight


def reduction_cells(cells: int) -> tuple[int, int]:
    return cells // 3, 2 * cells // 3


def output_paths() -> tuple[tuple[int, ...], ...]:
    """Every node sequence from a cell input (node 0 or 1) through increasing intermediate nodes to the last
    node: 2 x 2^3 = 16 paths, in the order of ABS's ``config.paths`` (depth first, next node ascending).
    Paths that end at nodes 2-4 are not listed (ABS's angle vector uses these 16 only)."""
    def from_node(u: int) -> list[tuple[int, ...]]:
        return [(u, LAST_NODE) if v == LAST_NODE else (u,) + rest
                for v in range(max(u + 1, FIRST_NODE), LAST_NODE + 1)
                for rest in ([()] if v == LAST_NODE else from_node(v))]

    return tuple(p for source in (0, 1) for p in from_node(source))


def cell_shapes(channels: int, cells: int, input_size: int) -> list[tuple[int, int, bool]]:
    """(channels C, input resolution H, is_reduction) of every cell; a reduction's output is ceil(H/2)."""
    shapes, c, h = [], channels, input_size
    for index in range(cells):
        reduction = index in reduction_cells(cells)
        c = 2 * c if reduction else c
        shapes.append((c, h, reduction))
        h = -(-h // 2) if reduction else h
    return shapes


def op_cost(op: str, resource: str, c: int, h: int, stride: int) -> float:
    """Cost of one op with C channels on an H x H input (spec §2, SNAS operations.py; H_o = output resolution).

    size: conv weights: sep k: 2(Ck² + C²); dil k: Ck² + C²; FactorizedReduce (strided skip): C²; else 0.
    flops: size · H_o²; pools 9 · C · H_o².
    mac: sep H_o²(aC + C) + size with a = 7 (stride 1) or 10 (stride 2); dil a = 3 or 6; pools 2CH_o² (stride 1)
    or 5CH_o² (stride 2); identity 2CH²; FactorizedReduce 2H_o²(4C + C/2) + size. ``none`` costs 0.
    """
    ho = -(-h // stride)
    if op == "none":
        return 0.0
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        return {"size": 0.0, "flops": 9.0 * c * ho * ho, "mac": (2.0 if stride == 1 else 5.0) * c * ho * ho}[resource]
    if op == "skip_connect":
        if stride == 1:
            return {"size": 0.0, "flops": 0.0, "mac": 2.0 * c * h * h}[resource]
        size = float(c * c)
        return {"size": size, "flops": size * ho * ho, "mac": 2.0 * ho * ho * (4 * c + c / 2) + size}[resource]
    k = int(op[-1])
    if op.startswith("sep_conv"):
        size, a = 2.0 * (c * k * k + c * c), (7 if stride == 1 else 10)
    else:
        size, a = float(c * k * k + c * c), (3 if stride == 1 else 6)
    return {"size": size, "flops": size * ho * ho, "mac": ho * ho * (a * c + c) + size}[resource]


# --- operations ----------------------------------------------------------------------------------------------
class Zero(nn.Module):
    """``none``: a zero tensor of the output's shape (strided on reduction edges)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


def dil_conv(c: int, k: int, stride: int, affine: bool) -> nn.Sequential:
    """ReLU, depthwise k x k with dilation 2, pointwise 1x1, BN."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, stride, k - 1, dilation=2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


def make_op(name: str, c: int, stride: int, affine: bool, pool_bn: bool = True) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (nn.MaxPool2d(3, stride, 1) if name == "max_pool_3x3"
                else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=affine)) if pool_bn else pool
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return sep_conv(c, int(name[-1]), stride, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        return dil_conv(c, int(name[-1]), stride, affine)
    raise UserError(f"darts: unknown operation {name!r}; choose from {', '.join(OPS)}")


# --- cells and networks --------------------------------------------------------------------------------------
class Cell(nn.Module):
    """One cell; ``edge_ops[e]`` lists the ops edge e holds (the supernet: every choice; a child: its op, or
    nothing for ``none``). Edge e's ops live at ``edges[e].ops[k]``, so child weights map from the supernet's."""

    def __init__(self, edge_ops: Sequence[Sequence[str]], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, affine: bool, pool_bn: bool = True):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else relu_conv_bn(c_pp, c, affine)
        self.pre1 = relu_conv_bn(c_p, c, affine)
        self.edges = nn.ModuleList(
            MixedOp([make_op(op, c, 2 if reduction and source < 2 else 1, affine, pool_bn) for op in ops])
            for ops, (_, source) in zip(edge_ops, EDGES))
        # identity edges (stride-1 skip) are exempt from a child's drop-path
        self.identity = [len(ops) == 1 and isinstance(m.ops[0], nn.Identity) for ops, m in zip(edge_ops, self.edges)]

    def forward(self, s0, s1, gates=None, active=None, unit_gates=False, inactive_grad=False, drop_prob=0.0,
                exempt_identity=False):
        """``gates`` (14, K) / ``active`` (14 lists) are this cell type's rows; a drop-path in training mode."""
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for target in range(FIRST_NODE, LAST_NODE + 1):
            total = None
            for source in range(target):
                edge = self.edges[e]
                if len(edge.ops):
                    y = edge(states[source], None if gates is None else gates[e],
                             None if active is None else active[e], unit_gates, inactive_grad)
                    if drop_prob > 0 and self.training and not (exempt_identity and self.identity[e]):
                        y = drop_path(y, drop_prob)
                    total = y if total is None else total + y
                e += 1
            if total is None:  # an input-less node (edge-all cells) is zero, at the cell's output resolution
                total = Zero(2 if self.reduction else 1)(states[1])
            states.append(total)
        return torch.cat(states[FIRST_NODE:], 1)


class _Network(nn.Module):
    """Stem conv3x3 (in -> 3C) + BN, ``cells`` cells with reductions at L//3 and 2L//3, GAP, linear."""

    def __init__(self, edge_ops, input_shape, num_outputs, channels, cells, affine, pool_bn=True):
        super().__init__()
        if cells < 1 or channels < 1:
            raise UserError(f"darts: a network needs cells >= 1 and channels >= 1, got {cells} and {channels}")
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise UserError(f"darts: input_shape must be (channels, H, H) with square images, got {tuple(input_shape)}")
        self.config = dict(channels=channels, cells=cells, num_outputs=num_outputs, input_shape=tuple(input_shape))
        self.reductions = reduction_cells(cells)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 3 * channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(3 * channels))  # affine in the search too, as in both codes
        c_pp = c_p = 3 * channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        self.aux_shape = None
        for index, (c, h, reduction) in enumerate(cell_shapes(channels, cells, input_shape[1])):
            rows = slice(len(EDGES), 2 * len(EDGES)) if reduction else slice(0, len(EDGES))
            self.cells.append(Cell(edge_ops[rows], c_pp, c_p, c, reduction, reduction_prev, affine, pool_bn))
            c_pp, c_p, reduction_prev = c_p, 4 * c, reduction
            if index == self.reductions[1]:
                self.aux_shape = (4 * c, -(-h // 2) if reduction else h)
        self.classifier = nn.Linear(c_p, num_outputs)

    def features(self, x, gates=None, active=None, unit_gates=False, inactive_grad=False, drop_prob=0.0,
                 exempt_identity=False, aux_head=None):
        s0 = s1 = self.stem(x)
        aux = None
        n = len(EDGES)
        for index, cell in enumerate(self.cells):
            rows = slice(n, 2 * n) if cell.reduction else slice(0, n)
            s0, s1 = s1, cell(s0, s1, None if gates is None else gates[rows], None if active is None else active[rows],
                              unit_gates, inactive_grad, drop_prob, exempt_identity)
            if aux_head is not None and index == self.reductions[1] and self.training:
                aux = aux_head(s1)
        return self.classifier(s1.mean((2, 3))), aux


class DartsSupernet(_Network):
    """The search network: every edge a MixedOp over its choices, BN affine=False (pools keep their BN)."""

    def __init__(self, choices: Sequence[Sequence[str]], input_shape=(3, 32, 32), num_outputs: int = 10,
                 channels: int = 16, cells: int = 8, drop_path: float = 0.0):
        super().__init__([list(c) for c in choices], input_shape, num_outputs, channels, cells, affine=False)
        self.config["drop_path"] = drop_path
        self.drop_path = drop_path

    def forward(self, x, gates: torch.Tensor | None = None, active: Sequence[Sequence[int]] | None = None,
                unit_gates: bool = False, inactive_grad: bool = False):
        return self.features(x, gates, active, unit_gates, inactive_grad, self.drop_path)[0]


class AuxiliaryHead(nn.Module):
    """DARTS's CIFAR head: ReLU, avgpool 5 s3 (8x8 -> 2x2), conv1x1 -> 128, BN, ReLU, conv2x2 -> 768, BN, ReLU,
    linear. Inputs smaller than 8x8 are average-pooled to 2x2 instead, so any input size works."""

    def __init__(self, c: int, resolution: int, num_outputs: int):
        super().__init__()
        pool = (nn.AvgPool2d(5, 3, count_include_pad=False) if resolution >= 8 else nn.AdaptiveAvgPool2d(2))
        self.body = nn.Sequential(nn.ReLU(), pool, nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                                  nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU())
        self.classifier = nn.Linear(768, num_outputs)

    def forward(self, x):
        return self.classifier(self.body(x).mean((2, 3)))


class DartsChild(_Network):
    """A stand-alone network (affine BN). ``.drop_path`` is set per epoch by the retraining loop."""

    def __init__(self, op_names: Sequence[str], input_shape=(3, 32, 32), num_outputs: int = 10, channels: int = 36,
                 cells: int = 20, auxiliary: bool = True, drop_path: float = 0.0, pool_bn: bool = True):
        edge_ops = [[] if op == "none" else [op] for op in op_names]
        super().__init__(edge_ops, input_shape, num_outputs, channels, cells, affine=True, pool_bn=pool_bn)
        self.op_names = list(op_names)
        self.drop_path = drop_path
        self.auxiliary = AuxiliaryHead(*self.aux_shape, num_outputs) if auxiliary else None

    def forward(self, x):
        return self.features(x, drop_prob=self.drop_path, exempt_identity=True, aux_head=self.auxiliary)


def child_from_supernet(space: DARTSSpace, supernet: DartsSupernet, arch: Sequence[int]) -> DartsChild:
    """A child (no aux head) holding the supernet's weights of ``arch``; its affine BN keeps the fresh (1, 0)
    parameters, so in eval mode it computes what the supernet computes with one-hot gates."""
    arch = space.check(arch)
    config = supernet.config
    child = space.build_child(arch, config["channels"], config["cells"], auxiliary=False,
                              input_shape=config["input_shape"], num_outputs=config["num_outputs"])
    child = child.to(next(supernet.parameters()).device)
    pattern = re.compile(r"(cells\.(\d+)\.edges\.(\d+)\.ops\.)(\d+)(\..*)")
    n = len(EDGES)
    state = child.state_dict()
    for key, value in supernet.state_dict().items():
        m = pattern.fullmatch(key)
        if m is None:
            if key in state:
                state[key] = value
            continue
        cell, edge, op = (int(m.group(i)) for i in (2, 3, 4))
        row = edge + (n if supernet.cells[cell].reduction else 0)
        target = m.group(1) + "0" + m.group(5)
        if op == arch[row] and target in state:
            state[target] = value
    child.load_state_dict(state)
    return child


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of the convolutions and linear layers of one forward pass on one input (eval mode, so no
    auxiliary head): the "FLOPs" of NAS papers."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        k = math.prod(module.kernel_size)
        total += output.numel() * (module.in_channels // module.groups) * k

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
