"""ABS's angle metric (Hu et al., ECCV 2020; spec abs.md §1): how far a child's weights turned during training.

angle(a) = arccos(<V0(a), V(a)> / (|V0(a)| |V(a)|)), where V(a) is child a's "block-like" weight vector in
the trained supernet and V0(a) the same vector at initialisation (θ0). A larger angle is better.

NB201 vector, as in the official ``exps/angle/weight_angle.py``:
- head/tail: every *parameter* outside the cells: stem conv and stem BN affine, both residual reduction blocks
  (convs and BN affine), the final ``lastact`` BN's affine weights (NB201's own network, ``op_style="nb201"``,
  which ABS trains; the ``"advantage"`` network has no ``lastact``), classifier weight and bias: exactly the
  official ``get_head_vector``/``get_fixed_cell_vector``/``get_tail_vector``. BN running statistics are
  buffers, not weights: left out.
- per cell and per path 0→3, 0→2→3, 0→1→2→3, 0→1→3, the concatenation of the path's op segments:
  conv ops give their conv weight only. The official ops have no conv bias; ours (``op_style="advantage"``)
  do, but a bias followed by BN is cancelled by the BN and gets no gradient, only weight decay, so it says
  nothing about training and is left out. BN inside ops is affine-free in ABS's supernet (``op_bn_affine=False``,
  as in the official code); where a network gives it affine weights they are left out too. ``none`` drops the whole path, ``skip_connect`` adds nothing, ``avg_pool_3x3`` adds
  a constant (C, 3, 3) block of 1/9, identical in V0 and V. An edge on several paths is repeated per path.

Fast scoring: an NB201 architecture is shared by all cells, and every term of <V0,V>, |V0|², |V|² is a sum over
segments, so each is head/tail + Σ_edges (number of none-free paths through the edge) x (that edge's op term
summed over cells). Per (edge, op) terms are computed once from the weights; the 15,625 architectures then
cost a gather and a small matrix product.

DARTS vector, as in the official ``DARTS/shrinking/angle.py`` (``get_arch_vector``):
- fixed part: the stem conv(s), every cell's preprocess0/preprocess1 convs (both convs of a FactorizedReduce)
  and the classifier *weight*: convolution and linear weights only, no BN (affine or not) and no bias. Order
  does not matter (both vectors use the same one; the official code puts the cells first).
- per cell, the 16 paths from node 0 or 1 to node 5 (``spaces.darts.output_paths``; paths that end at nodes
  2-4 are not used, though those nodes feed the cell's concat), each the concatenation of its edges' op
  weights: ``sep_conv_*`` its 4 convs (two depthwise, two pointwise), ``dil_conv_*`` its 2; ``none`` drops the
  whole path, ``skip_connect`` adds nothing (also at stride 2, where it is a FactorizedReduce with weights), a
  pool adds a constant (C, 3, 3) block of 1/9 with C the cell's channels (the official shape is that of the
  edge's sep_conv_3x3 depthwise weight, (C, 1, 3, 3)). An edge on several paths is repeated per path. Normal
  cells read the architecture's ``normal_*`` decisions and reduction cells its ``reduce_*`` ones (ABS's own
  children hold one cell for both; ``oneshot.abs_darts`` builds them that way).
The fast path is NB201's with 16 paths per cell type over the 28 decisions: a path is alive if none of its edges
is ``none``, and each (decision, op) term is summed over the cells of the decision's type.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import UserError
from .spaces.base import SearchSpace
from .spaces.darts import EDGES as DARTS_EDGES
from .spaces.darts import DARTSSpace, output_paths, reduction_cells
from .spaces.nb201 import EDGES, NB201Space

EPS = 1e-8  # torch.nn.CosineSimilarity's default, as in the official code
# The four input→output paths of an NB201 cell, as edge indices into EDGES.
PATHS = tuple(tuple(EDGES.index((v, u)) for u, v in zip(p[:-1], p[1:]))
              for p in ((0, 3), (0, 2, 3), (0, 1, 2, 3), (0, 1, 3)))
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_LAYER = re.compile(r"layers\.(\d+)\.")
# The 16 input->output paths of a DARTS cell, as edge indices into the cell's 14 edges.
DARTS_PATHS = tuple(tuple(DARTS_EDGES.index((v, u)) for u, v in zip(p[:-1], p[1:])) for p in output_paths())
POOLS = ("max_pool_3x3", "avg_pool_3x3")
_DARTS_CELL = re.compile(r"cells\.(\d+)\.")
_DARTS_OP = re.compile(r"cells\.(\d+)\.edges\.(\d+)\.ops\.(\d+)\.")


def initial_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """θ0: a detached CPU copy of the supernet's state at initialisation (take it before training starts)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def angle(v0: torch.Tensor, v: torch.Tensor) -> float:
    """arccos of the cosine similarity. In float64: near cos = 1, float32 rounding alone gives ~3e-4 rad."""
    cos = F.cosine_similarity(v0.double().flatten(), v.double().flatten(), dim=0, eps=EPS)
    return float(cos.clamp(-1.0, 1.0).acos())


# --- NB201 layout, read from the state dict ----------------------------------------------------------
def _nb201_layout(state: dict) -> tuple[list[str], list[tuple[int, int]]]:
    """(head/tail parameter keys, [(layer index, channels)] of the searchable cells).

    Cells without any weight (every op parameter-free) have no keys, so the cells are found from the
    reductions, which always have weights: N cells, reduction, N cells, reduction, N cells.
    """
    head = [k for k in state if not k.startswith("layers.") or ".edges." not in k]
    head = [k for k in head if not k.endswith(_BUFFERS)]
    reductions = sorted({int(_LAYER.match(k).group(1)) for k in state if _LAYER.match(k) and ".body." in k})
    if "stem.0.weight" not in state or len(reductions) != 2:
        raise UserError("the state dict is not an NB201 supernet's (needs stem.0.weight and two reduction blocks)")
    n = reductions[0]
    widths = [state["stem.0.weight"].shape[0]] + [state[f"layers.{r}.body.1.weight"].shape[0] for r in reductions]
    cells = [(stage * (n + 1) + i, widths[stage]) for stage in range(3) for i in range(n)]
    return head, cells


def _supernet_index(space: SearchSpace, supernet_ops: Sequence[Sequence[str]] | None) -> list[list[int]]:
    """Per edge, the supernet op index of each of the space's choices (they differ when a shrunk space is
    scored with a supernet built for the full one)."""
    supernet_ops = supernet_ops or [d.choices for d in space.decisions]
    index = []
    for d, ops in zip(space.decisions, supernet_ops):
        missing = [c for c in d.choices if c not in ops]
        if missing:
            raise UserError(f"abs: the supernet has no {missing} on {d.name}; pass the op lists it was built with")
        index.append([list(ops).index(c) for c in d.choices])
    return index


def check_space(space: SearchSpace) -> None:
    """Refuse spaces whose child vector is not implemented (call before training, not after)."""
    if not isinstance(space, (NB201Space, DARTSSpace)):
        raise UserError(f"abs: the angle metric is implemented for the nb201 and darts spaces, not {space.name!r}")


def child_vector(space: SearchSpace, state: dict, arch: Sequence[int],
                 supernet_ops: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
    """The explicit block-like vector of one child (float64): the slow reference for ``angles_of``."""
    check_space(space)
    arch = space.check(arch)
    build = _darts_child_vector if isinstance(space, DARTSSpace) else _nb201_child_vector
    return build(space, state, arch, _supernet_index(space, supernet_ops))


def _nb201_child_vector(space: SearchSpace, state: dict, arch, index) -> torch.Tensor:
    head, cells = _nb201_layout(state)
    names = space.op_names(arch)
    parts = [state[k].double().flatten() for k in head]
    for layer, c in cells:
        for path in PATHS:
            segment = []
            for e in path:
                if names[e] == "none":
                    segment = []
                    break
                if names[e] == "avg_pool_3x3":
                    segment.append(torch.full((c * 9,), 1 / 9, dtype=torch.float64))
                elif names[e].startswith("nor_conv"):
                    k = index[e][arch[e]]
                    segment.append(state[f"layers.{layer}.edges.{e}.ops.{k}.conv.weight"].double().flatten())
            parts.extend(segment)
    return torch.cat([p.cpu() for p in parts])


# --- DARTS layout, read from the state dict ------------------------------------------------------------
def _darts_layout(state: dict) -> tuple[list[str], list[tuple[int, int, bool]], dict[tuple[int, int, int], list[str]]]:
    """(fixed keys, [(cell index, channels C, is_reduction)], {(cell, edge, op index): the op's conv keys}).

    Convolution weights are the 4-d tensors (BN weights are 1-d), so no module index is hard-coded. Which cells
    reduce follows the network's own rule (``reduction_cells``); C is the preprocess1 conv's output width.
    """
    cells = sorted({int(m.group(1)) for k in state if (m := _DARTS_CELL.match(k))})
    if "stem.0.weight" not in state or "classifier.weight" not in state or cells != list(range(len(cells))) \
            or not cells:
        raise UserError("the state dict is not a DARTS supernet's (needs stem.0.weight, cells.N.* and "
                        "classifier.weight)")
    convs: dict[tuple[int, int, int], list[str]] = {}
    fixed = []
    for k, v in state.items():
        if v.dim() != 4:
            continue
        m = _DARTS_OP.match(k)
        if m:
            convs.setdefault((int(m.group(1)), int(m.group(2)), int(m.group(3))), []).append(k)
        elif k.startswith("stem.") or re.match(r"cells\.\d+\.pre[01]\.", k):
            fixed.append(k)
    fixed.append("classifier.weight")
    reductions = reduction_cells(len(cells))
    shapes = [(g, state[f"cells.{g}.pre1.1.weight"].shape[0], g in reductions) for g in cells]
    return fixed, shapes, convs


def _darts_row(edge: int, reduction: bool) -> int:
    """The decision of ``edge`` in a normal or a reduction cell."""
    return edge + (len(DARTS_EDGES) if reduction else 0)


def _darts_child_vector(space: SearchSpace, state: dict, arch, index) -> torch.Tensor:
    fixed, cells, convs = _darts_layout(state)
    names = space.op_names(arch)
    parts = [state[k].double().flatten() for k in fixed]
    for g, c, reduction in cells:
        for path in DARTS_PATHS:
            segment = []
            for e in path:
                row = _darts_row(e, reduction)
                name = names[row]
                if name == "none":
                    segment = []
                    break
                if name in POOLS:
                    segment.append(torch.full((c * 9,), 1 / 9, dtype=torch.float64))
                elif name.startswith(("sep_conv", "dil_conv")):
                    segment += [state[k].double().flatten() for k in convs[(g, e, index[row][arch[row]])]]
            parts.extend(segment)
    return torch.cat([p.cpu() for p in parts])


# --- fast path -----------------------------------------------------------------------------------
def _dot_terms(state0: dict, state: dict, keys: Sequence[str]) -> torch.Tensor:
    """(3,) [<a,b>, |a|², |b|²] of the concatenated tensors ``keys`` of the two states."""
    a = torch.cat([state0[k].detach().double().flatten().cpu() for k in keys]) if keys else torch.zeros(0)
    b = torch.cat([state[k].detach().double().flatten().cpu() for k in keys]) if keys else torch.zeros(0)
    return torch.stack([a @ b, a @ a, b @ b]).double()


def _op_terms(space: SearchSpace, state0: dict, state: dict, supernet_ops) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,) head/tail and (3, edges, choices) per-op terms [<V0,V>, |V0|², |V|²], summed over cells."""
    head, cells = _nb201_layout(state)
    index = _supernet_index(space, supernet_ops)
    ops = torch.zeros(3, len(space.decisions), space.max_choices, dtype=torch.float64)
    for e, d in enumerate(space.decisions):
        for j, name in enumerate(d.choices):
            if name == "avg_pool_3x3":  # a C x 3 x 3 block of 1/9 in both vectors: C/9 in each term
                ops[:, e, j] = sum(c for _, c in cells) / 9
            elif name.startswith("nor_conv"):
                ops[:, e, j] = _dot_terms(state0, state, [f"layers.{layer}.edges.{e}.ops.{index[e][j]}.conv.weight"
                                                          for layer, _ in cells])
    return _dot_terms(state0, state, head), ops


def _darts_op_terms(space: SearchSpace, state0: dict, state: dict, supernet_ops) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``_op_terms`` over the 28 decisions: each (decision, op) term summed over the cells of its type."""
    fixed, cells, convs = _darts_layout(state)
    index = _supernet_index(space, supernet_ops)
    ops = torch.zeros(3, len(space.decisions), space.max_choices, dtype=torch.float64)
    for row, d in enumerate(space.decisions):
        e, reduction = row % len(DARTS_EDGES), row >= len(DARTS_EDGES)
        of_type = [(g, c) for g, c, r in cells if r == reduction]
        for j, name in enumerate(d.choices):
            if name in POOLS:
                ops[:, row, j] = sum(c for _, c in of_type) / 9
            elif name.startswith(("sep_conv", "dil_conv")):
                keys = [k for g, _ in of_type for k in convs[(g, e, index[row][j])]]
                ops[:, row, j] = _dot_terms(state0, state, keys)
    return _dot_terms(state0, state, fixed), ops


def _incidence(paths: Sequence[Sequence[int]], blocks: int, width: int) -> torch.Tensor:
    """(paths x blocks, decisions) 0/1: which decisions each path of each cell type runs through."""
    incidence = torch.zeros(len(paths) * blocks, width * blocks, dtype=torch.float64)
    for b in range(blocks):
        for p, path in enumerate(paths):
            incidence[b * len(paths) + p, [b * width + e for e in path]] = 1.0
    return incidence


def vector_stats(space: SearchSpace, state0: dict, state: dict, archs,
                 supernet_ops: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
    """(3, N) float64: <V0,V>, |V0|², |V|² of each architecture, without building any vector.

    ``archs``: a sequence of architectures of ``space`` or an (N, decisions) integer tensor. ``supernet_ops``:
    the op list per decision that the supernet of ``state`` was built with (default: the space's own choices).
    """
    check_space(space)
    if isinstance(space, DARTSSpace):
        head, ops = _darts_op_terms(space, state0, state, supernet_ops)
        incidence = _incidence(DARTS_PATHS, 2, len(DARTS_EDGES))
    else:
        head, ops = _op_terms(space, state0, state, supernet_ops)
        incidence = _incidence(PATHS, 1, len(EDGES))
    n = len(space.decisions)
    a = torch.as_tensor(archs if torch.is_tensor(archs) else list(archs), dtype=torch.long).reshape(-1, n)
    rows = torch.arange(n)
    is_none = torch.tensor([[c == "none" for c in d.choices] + [False] * (space.max_choices - d.size)
                            for d in space.decisions])
    # a path counts only if none of its edges is 'none'; an edge counts once per surviving path through it
    alive = ((is_none[rows, a].double() @ incidence.T) == 0).double()         # (N, paths)
    uses = alive @ incidence                                                  # (N, decisions)
    return head[:, None] + (ops[:, rows, a] * uses).sum(-1)                   # (3, N)


def angles_of(space: SearchSpace, supernet_state0: dict, supernet_state: dict, archs,
              supernet_ops: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
    """Angles (float64, radians) of many architectures at once; equal to ``angle(child_vector(θ0), child_vector(θ))``."""
    dot, n0, n = vector_stats(space, supernet_state0, supernet_state, archs, supernet_ops)
    return (dot / (n0 * n).sqrt().clamp_min(EPS)).clamp(-1.0, 1.0).acos()


def magnitudes_of(space: SearchSpace, supernet_state: dict, archs,
                  supernet_ops: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
    """|V(a)|: the L2 norm of each child's trained block-like vector (a weight-magnitude baseline metric)."""
    return vector_stats(space, supernet_state, supernet_state, archs, supernet_ops)[2].sqrt()
