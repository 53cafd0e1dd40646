"""ABS on the DARTS CNN space (Hu et al., ECCV 2020; spec abs.md §1-§2), as the official ``DARTS/shrinking`` code
runs it: rounds of supernet training, operator scoring by sampled children, and one drop per edge per round.

Decisions taken here (the spec leaves them open or our space differs from the official one):

- **One op list for both cell types** (``tie_cells=True``, official). The official code shrinks a single
  14-edge list (``config.edges``) used by every cell, normal or reduction, and its children are one cell
  architecture copied into all 14 layers. Our space has 28 decisions (``normal_j_i``, ``reduce_j_i``), so the
  shrinking works on a 14-decision view ``edge_j_i`` (``SharedCells``): a child of the view is run with the same
  ops in normal and reduction cells, a score belongs to the shared edge, and a drop removes the op from both
  ``normal_j_i`` and ``reduce_j_i``. The size threshold (1e6) applies to the view, as in the official code
  (3^14 = 4.8e6 > 1e6 >= 2^14: six rounds from 8 ops to 2). ``tie_cells=False`` shrinks the 28 decisions
  independently (children draw normal and reduce cells independently), an option of ours.
- **Two inputs per node** (``two_inputs=True``, official ``check_cand``): after the uniform draw, a node with
  more than two non-``none`` inputs gets random ones set to ``none`` and a node with fewer gets random ``none``
  inputs redrawn from its other kept ops, so children are DARTS-like cells. As in the official code this ``none``
  is structural: it is used on an edge even after ``none`` was dropped from that edge's list (the supernet keeps
  every op it was built with; such children credit no operator on that edge), and the operator being scored is
  written after the check, so it may leave a node with one or three inputs (spec pitfall 7). Training and
  scoring draw children the same way. ``two_inputs=False``: plain uniform children.
- **At least 2 ops per edge** (``MIN_OPS``): the official rule drops on every edge each round and stops by the
  threshold; the floor makes "down to 2" hold for ``tie_cells=False`` and other thresholds too.
- **θ0** is the supernet after ``warmup_epochs`` of the same uniform training (official: after the
  progressive-insertion warm-up, 11 stages x 5 epochs growing 3 -> 14 cells). Our supernet has a fixed depth,
  so the warm-up trains the full-depth network; with ``warmup_epochs=0`` (the darts presets) θ0 is the
  initialisation, as for SPOS/NB201.
- **Epochs.** The run's ``epochs - warmup_epochs`` are split over the rounds as the official 150 epochs of the
  first round and 20 of each later one (``shrinking.round_ends``; 150 + 5 x 20 over 6 rounds), with the
  trainer's one learning-rate schedule over the whole run. ABS's own protocol is epochs = 55 + 250 with
  ``warmup_epochs=55``.
- **No drop-path** in the shrinking supernet (ABS's has none; the darts presets set 0.3 for SNAS's search).
- ``none`` is an operator like the others (official): it can be dropped. A shrunk list without ``none`` then
  cannot express DARTS's top-2 cells in our index encoding (``DARTSSpace.derive_top2`` refuses it); edge-all
  derivations (argmax per edge) work.
- Scores: mean angle of the first ``samples_per_op`` children (in sampling order) holding the operator, out of
  distinct children drawn per operator with it fixed (official ``compute_scores``; 1000 each).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .angle import angles_of, initial_state
from .errors import UserError
from .shrinking import (Operator, candidate_archs, operator_scores, per_edge_drops, planned_rounds, round_ends,
                        scored_decisions, without)
from .spaces.base import Architecture, Categorical, SearchSpace
from .spaces.darts import EDGES, FIRST_NODE, LAST_NODE, DARTSSpace
from .strategies.base import Strategy
from .trainer import Search

MIN_OPS = 2             # ops each edge keeps at least
THRESHOLD = 1e6         # official shrinking_finish_threshold, on the shared list
SAMPLES_PER_OP = 1000   # official sample_num
# Per node, the indices (into the 14 edges of a cell) of its incoming edges.
NODE_EDGES = tuple(tuple(e for e, (target, _) in enumerate(EDGES) if target == node)
                   for node in range(FIRST_NODE, LAST_NODE + 1))


class SharedCells:
    """How ABS's op lists map onto the DARTS space: ``base`` is the view the shrinking works on (14 shared
    decisions ``edge_j_i``, or the 28 decisions themselves with ``tie=False``), with the supernet's op lists."""

    def __init__(self, space: DARTSSpace, tie: bool = True):
        self.space, self.tie = space, tie
        n = len(EDGES)
        if tie:
            normal, reduce = space.decisions[:n], space.decisions[n:]
            differ = [a.name for a, b in zip(normal, reduce) if a.choices != b.choices]
            if differ:
                raise UserError(f"abs: normal and reduce cells hold different ops on {', '.join(differ[:3])}; ABS "
                                "shrinks one op list shared by both: restrict them alike or pass tie_cells=False")
            self.base = SearchSpace([Categorical(f"edge_{j}_{i}", d.choices) for (j, i), d in zip(EDGES, normal)])
        else:
            self.base = SearchSpace(list(space.decisions))
        # the structural 'none' of each base decision (None where the supernet has no 'none' op)
        self.none = [d.choices.index("none") if "none" in d.choices else None for d in self.base.decisions]

    def full(self, child: Sequence[int]) -> Architecture:
        """The space's 28-decision architecture of a view child (the view keeps the supernet's op order)."""
        child = tuple(int(k) for k in child)
        return child + child if self.tie else child

    def kept_indices(self, current: SearchSpace) -> list[list[int]]:
        """Per base decision, the base indices of the ops ``current`` (a restriction of ``base``) keeps."""
        return [[b.choices.index(c) for c in d.choices] for b, d in zip(self.base.decisions, current.decisions)]

    def kept(self, current: SearchSpace) -> dict[str, list[str]]:
        """The choices of the space's 28 decisions that ``current`` keeps (``SearchSpace.restrict`` input)."""
        if not self.tie:
            return {d.name: list(d.choices) for d in current.decisions}
        lists = [list(d.choices) for d in current.decisions]
        return {d.name: lists[row % len(EDGES)] for row, d in enumerate(self.space.decisions)}


def two_input_child(kept: Sequence[Sequence[int]], none: Sequence[int | None], rng: np.random.Generator,
                    two_inputs: bool = True) -> list[int]:
    """One child (base indices) as ABS's DARTS code draws it: a uniform kept op per decision, then (with
    ``two_inputs``) ``check_cand``: each node with more than two non-``none`` inputs gets random ones set to its
    structural ``none`` (``none[r]``; edges whose supernet has none are left alone), and each node with more
    ``none`` inputs than that gets random ones redrawn uniformly from the edge's other kept ops (kept as
    ``none`` when it has none). ``kept`` may hold 14 decisions (one cell) or 28 (normal, then reduce)."""
    arch = [int(ops[rng.integers(len(ops))]) for ops in kept]
    if not two_inputs:
        return arch
    for block in range(len(kept) // len(EDGES)):
        for edges in NODE_EDGES:
            rows = [block * len(EDGES) + e for e in edges]
            nones = [r for r in rows if arch[r] == none[r]]
            wanted = len(rows) - 2
            if len(nones) < wanted:
                real = [r for r in rows if none[r] is not None and arch[r] != none[r]]
                count = min(wanted - len(nones), len(real))
                for r in rng.choice(real, size=count, replace=False) if count else []:
                    arch[int(r)] = none[int(r)]
            elif len(nones) > wanted:
                for r in rng.choice(nones, size=len(nones) - wanted, replace=False):
                    others = [k for k in kept[int(r)] if k != none[int(r)]]
                    if others:
                        arch[int(r)] = int(others[rng.integers(len(others))])
    return arch


def score_operators(cells: SharedCells, current: SearchSpace, theta0: dict, state: dict, samples_per_op: int,
                    rng: np.random.Generator, two_inputs: bool = True
                    ) -> tuple[dict[Operator, float], list[Architecture], torch.Tensor]:
    """(scores of ``current``'s operators, the children drawn (base indices), their angles): one round's
    scoring of the supernet weights ``state`` against ``theta0``."""
    base = cells.base
    kept = cells.kept_indices(current)
    operators = [(i, k) for i in scored_decisions(current) for k in kept[i]]
    children = candidate_archs(base, samples_per_op, operators=operators,
                               draw=lambda: two_input_child(kept, cells.none, rng, two_inputs))
    angles = angles_of(cells.space, theta0, state, [cells.full(c) for c in children])
    wanted = {(base.decisions[i].name, base.decisions[i].choices[k]) for i, k in operators}
    scores = operator_scores(base, children, angles, cap=samples_per_op)
    return {op: v for op, v in scores.items() if op in wanted}, children, angles


class _Sampler(Strategy):
    """ABS's DARTS supernet training (official ``train.py``): each step one child of the kept ops, drawn as
    ``two_input_child`` draws it, one cell architecture for every cell (``tie_cells``)."""

    name = "abs_darts"
    updates_theta = False
    needs_gate_grad = False

    def __init__(self, owner: "DartsShrinkSearch", seed: int, device):
        super().__init__(owner.space, seed, device)
        self.owner = owner

    def ask(self, phase: str):
        owner = self.owner
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=self.generator)))
        child = two_input_child(owner.cells.kept_indices(owner.current), owner.cells.none, rng, owner.two_inputs)
        return [self.one_hot_sample(owner.cells.full(child))]


class DartsShrinkSearch(Search):
    """The supernet training of ABS's DARTS shrinking: ``Search`` on the full supernet with ABS's sampler over the
    kept ops (``current``, the view after the rounds so far), the rounds in its checkpoint, no drop-path, and no
    result.json (the run's result is shrink.json)."""

    def __init__(self, config, task, device, tie_cells: bool = True, two_inputs: bool = True):
        super().__init__(config, task, device)
        if not isinstance(self.space, DARTSSpace):
            raise UserError(f"abs_darts: the space is {self.space.name!r}, not darts")
        self.model.drop_path = 0.0  # ABS's DARTS supernet has no drop-path
        self.cells = SharedCells(self.space, tie_cells)
        self.two_inputs = two_inputs
        self.settings = {"tie_cells": tie_cells, "two_inputs": two_inputs}
        self.settings_saved: dict | None = None  # those of the resumed checkpoint
        self.current: SearchSpace = self.cells.base
        self.rounds: list[dict] = []
        self.strategy = _Sampler(self, config.seed, device)

    def drop(self, record: dict) -> None:
        """Apply one round's drops (``record["dropped"]``: [decision, op] pairs) and keep its record."""
        self.current = without(self.current, [tuple(op) for op in record["dropped"]])
        self.rounds.append(record)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "abs_rounds": json.dumps(self.rounds),
                "abs_settings": json.dumps(self.settings, sort_keys=True)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.settings_saved = json.loads(state.get("abs_settings", "null"))
        self.current, self.rounds = self.cells.base, []
        for record in json.loads(state.get("abs_rounds", "[]")):
            self.drop(record)

    def finish(self, folder) -> None:
        return None


def _theta0(search: DartsShrinkSearch, folder, path: Path, warm: int, progress: bool) -> dict:
    """θ0: the weights after ``warm`` steps (taken now, or read back from ``path`` on a resume past it)."""
    from .runs import atomic_write

    if search.step < warm:
        search.run(folder, progress=progress, stop_after=warm)
    elif search.step > warm or path.exists():
        if not path.exists():
            raise UserError(f"{path} is missing: ABS needs the weights after warm-up; start again with --overwrite")
        return torch.load(path, map_location="cpu", weights_only=True)
    theta0 = initial_state(search.model)
    atomic_write(path, lambda handle: torch.save(theta0, handle))
    return theta0


def abs_shrink_darts(config, data, out_dir, device: str | torch.device = "cpu", resume: bool = False,
                     overwrite: bool = False, progress: bool = True, samples_per_op: int | None = None,
                     tie_cells: bool = True, two_inputs: bool = True, threshold: float = THRESHOLD) -> SearchSpace:
    """ABS's DARTS shrinking into the run folder ``out_dir``: warm-up and θ0, then rounds of training, scoring
    (``samples_per_op`` children per operator) and one drop per edge until the op list has at most
    ``threshold`` children; writes ``shrink.json`` and returns the shrunk space (see the module docstring)."""
    from .runs import RunFolder, atomic_write

    samples_per_op = SAMPLES_PER_OP if samples_per_op is None else samples_per_op  # read now: tests lower it
    if not (isinstance(samples_per_op, int) and samples_per_op >= 1):
        raise UserError(f"abs: samples_per_op must be a positive integer, got {samples_per_op!r}")
    if not threshold >= 1:
        raise UserError(f"abs: the size threshold must be at least 1, got {threshold}")
    keep = {k: v for k, v in config.strategy_options.items() if k == "candidates"}
    config = config.replace(strategy="random", strategy_options=keep)
    out = Path(out_dir)
    with RunFolder(out, config.to_dict(), resume=resume, overwrite=overwrite,
                   defaults=type(config)().to_dict()) as folder:
        search = DartsShrinkSearch(config, data, torch.device(device), tie_cells, two_inputs)
        (out / "shrink.json").unlink(missing_ok=True)  # a stale result must not outlive a new run
        if folder.restore(search.load_state_dict) and search.settings_saved not in (None, search.settings):
            raise UserError(f"--resume with other ABS settings ({search.settings_saved}) than {search.settings}; "
                            "use the original ones or start again with --overwrite")
        cells = search.cells
        plan = planned_rounds([d.size for d in cells.base.decisions], threshold, MIN_OPS)
        warm = config.warmup_epochs * search.steps_per_epoch
        ends = round_ends(warm, search.total_steps, plan)
        theta0 = _theta0(search, folder, out / "theta0.pt", warm, progress) if plan else None
        for r in range(len(search.rounds), plan):
            if search.step < ends[r]:
                search.run(folder, progress=progress, stop_after=ends[r])
            start = time.perf_counter()
            rng = np.random.default_rng([config.seed, r])
            scores, children, _ = score_operators(cells, search.current, theta0, search.model.state_dict(),
                                                  samples_per_op, rng, two_inputs)
            dropped = per_edge_drops(search.current, scores, MIN_OPS)
            search.drop({"round": r, "step": search.step, "size_before": search.current.size,
                         "children": len(children), "seconds": round(time.perf_counter() - start, 3),
                         "scores": {d.name: {c: scores[(d.name, c)] for c in d.choices if (d.name, c) in scores}
                                    for d in search.current.decisions},
                         "dropped": [list(op) for op in dropped]})
            search.rounds[-1]["size_after"] = search.current.size
            folder.save_checkpoint(search.state_dict())  # the drop is part of the run's state
        kept = cells.kept(search.current)
        shrunk = search.space.restrict(kept)
        record = {
            "space": config.space, "space_options": config.space_options, "seed": config.seed,
            "protocol": "darts", "samples_per_op": samples_per_op, "threshold": threshold, "min_ops": MIN_OPS,
            **search.settings, "theta0_step": warm, "round_ends": ends,
            "size_before": search.space.size, "size_after": shrunk.size,
            "list_size_before": cells.base.size, "list_size_after": search.current.size,
            "kept": kept,
            "dropped": [{"round": rec["round"], "decision": name, "op": op, "score": rec["scores"][name][op]}
                        for rec in search.rounds for name, op in rec["dropped"]],
            "rounds": search.rounds,
        }
        atomic_write(out / "shrink.json", json.dumps(record, indent=2).encode())  # a kill leaves no half file
    return shrunk
