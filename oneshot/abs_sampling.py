"""How ABS trains its NB201 supernet: a uniform child per cell, with no node fed by 'none' alone.

The official code (megvii-model/AngleNAS, ``NAS-Bench-201/lib/models/cell_searchs/search_cells.py``,
``forward_urs``; ``forward_dropnode`` once ops are dropped) samples afresh in **every cell** at every step,
so the 15 cells of one step run 15 different architectures. Within a cell it goes node by node: it draws one
op uniformly for each incoming edge of the node, and if every drawn op is ``none`` it redraws **all of that
node's edges** (and only that node's), until at least one is not ``none``. Nodes are independent.

So each node's ops are uniform over the combinations that are not all ``none``. With the 5 NB201 ops on
every edge: node 1 (one input) never takes ``none`` (1/4 per other op); on each edge into node 2, ``none``
has probability 4/24 = 1/6 and every other op 5/24; into node 3, ``none`` 24/124 = 6/31, every other op
25/124. ``op_marginals`` gives these numbers for any (shrunk) space.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import UserError
from .spaces.base import Architecture
from .spaces.nb201 import EDGES, NB201Space

NODES = (1, 2, 3)


def _node_edges(node: int) -> list[int]:
    """Indices into EDGES of the edges that feed ``node``."""
    return [i for i, (target, _) in enumerate(EDGES) if target == node]


def _none_table(space: NB201Space) -> torch.Tensor:
    """Bool (edges x max_choices): which choice of each edge is 'none' (padding is False)."""
    table = torch.zeros(len(space.decisions), space.max_choices, dtype=torch.bool)
    for e, d in enumerate(space.decisions):
        for k, name in enumerate(d.choices):
            table[e, k] = name == "none"
    return table


def _check(space) -> None:
    if not isinstance(space, NB201Space):
        raise UserError(f"abs: per-cell sampling is implemented for the nb201 space, not {getattr(space, 'name', space)!r}")
    for node in NODES:
        if all(set(space.decisions[e].choices) == {"none"} for e in _node_edges(node)):
            raise UserError(f"abs: every input of node {node} allows only 'none', so no cell can feed it; "
                            f"keep another op on one of {[space.decisions[e].name for e in _node_edges(node)]}")


def sample_cells(space: NB201Space, n_cells: int, generator: torch.Generator | None = None) -> list[Architecture]:
    """One architecture per cell (``n_cells`` of them, independent), each drawn as ABS's ``forward_urs`` does.

    Drawing every cell at once and then redrawing, together, the edges of each node whose ops all came out
    ``none`` gives each node the same law as the official per-node loop: uniform over its not-all-none
    combinations, independently of the other nodes and cells.
    """
    _check(space)
    if not isinstance(n_cells, int) or n_cells < 1:
        raise UserError(f"abs: n_cells must be a positive integer, got {n_cells!r}")
    sizes = [d.size for d in space.decisions]
    archs = torch.stack([torch.randint(s, (n_cells,), generator=generator) for s in sizes], dim=1)
    is_none = _none_table(space)
    for node in NODES:
        edges = torch.tensor(_node_edges(node))
        while True:
            dead = is_none[edges, archs[:, edges]].all(dim=1)
            count = int(dead.sum())
            if count == 0:
                break
            redraw = torch.stack([torch.randint(sizes[e], (count,), generator=generator) for e in edges.tolist()], dim=1)
            archs[dead.nonzero(as_tuple=True)[0][:, None], edges[None, :]] = redraw
    return [tuple(row) for row in archs.tolist()]


def op_marginals(space: NB201Space) -> torch.Tensor:
    """(edges x max_choices) float64: the probability of each op on each edge under ``sample_cells``.

    For an edge e into a node whose edges draw 'none' with probabilities q_j: P(all none) = prod_j q_j, and
    P(e = k) = (1/n_e - [k is none] * (1/n_e) * prod_{j != e} q_j) / (1 - P(all none)).
    """
    _check(space)
    is_none = _none_table(space)
    out = torch.zeros(len(space.decisions), space.max_choices, dtype=torch.float64)
    for node in NODES:
        edges = _node_edges(node)
        q = {e: int(is_none[e].sum()) / space.decisions[e].size for e in edges}
        all_none = torch.tensor([q[e] for e in edges], dtype=torch.float64).prod().item()
        for e in edges:
            n = space.decisions[e].size
            others = torch.tensor([q[j] for j in edges if j != e], dtype=torch.float64).prod().item()
            for k in range(n):
                dead_with_k = others / n if is_none[e, k] else 0.0
                out[e, k] = (1 / n - dead_with_k) / (1 - all_none)
    return out


def per_cell_active(space: NB201Space, archs: Sequence[Architecture],
                    supernet_ops: Sequence[Sequence[str]] | None = None) -> list[list[list[int]]]:
    """The per-cell ``active`` argument of the NB201 supernet's forward: per cell, per edge, [op index].

    ``supernet_ops``: the op list per edge that the supernet was built with, when it is not the space's own
    (a shrunk space trained on with the full supernet's weights, as ABS does after dropping ops).
    """
    supernet_ops = supernet_ops or [d.choices for d in space.decisions]
    index = []
    for d, ops in zip(space.decisions, supernet_ops):
        missing = [c for c in d.choices if c not in ops]
        if missing:
            raise UserError(f"abs: the supernet has no {missing} on {d.name}; pass the op lists it was built with")
        index.append([list(ops).index(c) for c in d.choices])
    return [[[index[e][k]] for e, k in enumerate(space.check(arch))] for arch in archs]
