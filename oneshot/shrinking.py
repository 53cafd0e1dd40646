"""ABS: angle-based search-space shrinking (Hu et al., ECCV 2020; spec abs.md §2), a space transformer.

Train a supernet with uniform single-path sampling, score every operator (decision, choice) by the mean angle
of the children that contain it, drop the lowest-scoring operators (never a decision's last choice), and hand
the smaller space to any strategy. The shrinking logic only needs a space's decisions, ``restrict`` and a
function that scores lists of architectures; the angle itself (``oneshot.angle``) is per space.

NB201 protocol (official ``dropnode_by_angle.py``): one round over all enumerated children, dropping 20 of the
30 operators of the 5-op space. That round ignores the 1e6 size threshold (15,625 is already below it). For the
4-op space we drop the same fraction, 2/3: 16 of 24, leaving 8 operators (at least one per edge).

DARTS protocol (official ``DARTS/shrinking``): rounds of training, sampled children per operator and a drop of
the lowest-scoring operator on every edge, until the shared 14-edge op list has at most 1e6 children; the
pipeline lives in ``oneshot.abs_darts`` (``abs_shrink`` hands DARTS spaces to it), built from the pieces here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import UserError
from .spaces.base import Architecture, Categorical, SearchSpace

Operator = tuple[str, str]  # (decision name, choice)
DROP_FRACTION = 2 / 3       # NB201: 20 of 30


UNIFORM_SAMPLERS = ("random", "abs_uniform")  # strategies that can train the supernet ABS scores

def scored_decisions(space: SearchSpace) -> list[int]:
    """Decisions with more than one remaining choice: only their operators are scored."""
    return [i for i, d in enumerate(space.decisions) if isinstance(d, Categorical) and d.size > 1]


def operator_scores(space: SearchSpace, archs: Sequence[Architecture], angles,
                    cap: int | None = None) -> dict[Operator, float]:
    """Mean angle of the given children that contain each operator (operators no child contains are left out);
    with ``cap``, of the first ``cap`` of them in the given order (the official ``sample_num`` cap)."""
    a = np.asarray(list(archs), dtype=np.int64).reshape(-1, len(space.decisions))
    values = np.asarray(angles.cpu() if torch.is_tensor(angles) else angles, dtype=np.float64)
    if len(values) != len(a):
        raise ValueError(f"{len(a)} architectures but {len(values)} angles")
    scores = {}
    for i in scored_decisions(space):
        d = space.decisions[i]
        for k, choice in enumerate(d.choices):
            hit = a[:, i] == k
            if hit.any():
                scores[(d.name, choice)] = float(values[hit][:cap].mean())
    return scores


def _position(space: SearchSpace) -> dict[Operator, tuple[int, int]]:
    return {(d.name, c): (i, k) for i, d in enumerate(space.decisions) if isinstance(d, Categorical)
            for k, c in enumerate(d.choices)}


def select_drops(space: SearchSpace, scores: dict[Operator, float], n_drop: int) -> list[Operator]:
    """Walk the operators by ascending score (ties: space order) and drop each one whose decision would keep
    a choice, until ``n_drop`` are dropped. Equivalent to the official look-ahead rule."""
    position = _position(space)
    unknown = [op for op in scores if op not in position]
    if unknown:
        raise UserError(f"abs: scores name operators the space lacks: {unknown[:3]}")
    left = {d.name: d.size for d in space.decisions if isinstance(d, Categorical)}
    dropped = []
    for op in sorted(scores, key=lambda op: (scores[op], position[op])):
        if len(dropped) >= n_drop:
            break
        if left[op[0]] > 1:
            left[op[0]] -= 1
            dropped.append(op)
    return dropped


def without(space: SearchSpace, dropped: Sequence[Operator]) -> SearchSpace:
    """The space with the given operators removed."""
    gone = set(dropped)
    return space.restrict({d.name: [c for c in d.choices if (d.name, c) not in gone]
                           for d in space.decisions if isinstance(d, Categorical)})


def drop_operators(space: SearchSpace, scores: dict[Operator, float], n_drop: int) -> SearchSpace:
    """SPOS/FairNAS/NB201 rule: drop the ``n_drop`` lowest-scoring operators, at least one kept per decision."""
    return without(space, select_drops(space, scores, n_drop))


def per_edge_drops(space: SearchSpace, scores: dict[Operator, float], min_choices: int = 1) -> list[Operator]:
    """DARTS rule: the lowest-scoring operator of every decision that keeps more than ``min_choices`` choices
    (ABS's DARTS runs use 2: ``abs_darts.MIN_OPS``)."""
    position = _position(space)
    lowest: dict[str, Operator] = {}
    for op in scores:
        best = lowest.get(op[0])
        if best is None or (scores[op], position[op]) < (scores[best], position[best]):
            lowest[op[0]] = op
    sizes = {d.name: d.size for d in space.decisions}
    return [op for name, op in lowest.items() if sizes[name] > min_choices]


def drop_per_edge(space: SearchSpace, scores: dict[Operator, float], min_choices: int = 1) -> SearchSpace:
    return without(space, per_edge_drops(space, scores, min_choices))


def planned_rounds(sizes: Sequence[int], threshold: float = 1e6, min_choices: int = 1) -> int:
    """How many per-edge rounds take choice counts ``sizes`` to at most ``threshold`` children (each round
    removes one choice from every decision above ``min_choices``); 8 ops on 14 edges: 6 (8^14 -> 2^14)."""
    sizes, rounds = list(sizes), 0
    while math.prod(sizes) > threshold and any(n > min_choices for n in sizes):
        sizes = [n - 1 if n > min_choices else n for n in sizes]
        rounds += 1
    return rounds


def round_ends(start: int, total: int, rounds: int, shares: tuple[int, int] = (150, 20)) -> list[int]:
    """The training step after which each round scores and drops: the steps after ``start`` (θ0) up to
    ``total`` split as ABS's DARTS schedule splits its epochs, ``shares[0]`` for the first round and
    ``shares[1]`` for each later one (150 and 20: ``config.first_stage_epochs``/``other_stage_epochs``), every
    round at least one step; the last round ends at ``total``."""
    budget = total - start
    if rounds < 1:
        return []
    if budget < rounds:
        raise UserError(f"abs: {rounds} shrinking rounds need at least {rounds} training steps after warm-up, "
                        f"the settings give {budget}; raise --set epochs (or lower warmup_epochs/batch_size)")
    later = max(1, round(budget * shares[1] / (shares[0] + shares[1] * (rounds - 1)))) if rounds > 1 else 0
    later = min(later, (budget - 1) // (rounds - 1)) if rounds > 1 else 0
    first = budget - later * (rounds - 1)
    return [start + first + i * later for i in range(rounds)]


def default_drop(space: SearchSpace) -> int:
    """2/3 of the scored operators: 20 of NB201's 30 (the paper), 16 of the 4-op space's 24."""
    return round(DROP_FRACTION * sum(space.decisions[i].size for i in scored_decisions(space)))


def candidate_archs(space: SearchSpace, samples_per_op: int = 1000, generator: torch.Generator | None = None,
                    enumerate_below: int = 100_000, accept: Callable[[Architecture], bool] | None = None,
                    draw: Callable[[], Architecture] | None = None,
                    operators: Sequence[tuple[int, int]] | None = None) -> list[Architecture]:
    """The children to score: every child of a small space; otherwise, per operator, distinct children with
    that operator fixed and the rest uniform, each credited to every operator it contains, until each operator
    has ``samples_per_op`` (tries capped at 100x, as in the official code). ``accept`` is e.g. a FLOPs cap.

    ``draw()``: one random child instead of a uniform one (never enumerated; DARTS: ABS's two-input cells);
    the operator is written into it afterwards. ``operators``: the (decision, choice index) pairs to fill
    (default: every choice of the decisions with more than one)."""
    if draw is None and space.size <= enumerate_below:
        return [a for a in space.enumerate() if accept is None or accept(a)]
    generator = generator or torch.Generator().manual_seed(0)
    draw = draw or (lambda: space.sample(generator))
    if operators is None:
        operators = [(i, k) for i in scored_decisions(space) for k in range(space.decisions[i].size)]
    count = {op: 0 for op in operators}
    seen: dict[Architecture, None] = {}
    for (i, k) in count:
        tries = 0
        while count[(i, k)] < samples_per_op and tries < 100 * samples_per_op:
            tries += 1
            a = list(draw())
            a[i] = k
            a = tuple(a)
            if a in seen or (accept is not None and not accept(a)):
                continue
            seen[a] = None
            for j, v in enumerate(a):
                if (j, v) in count:
                    count[(j, v)] += 1
    return list(seen)


def shrink_until(space: SearchSpace, score: Callable[[SearchSpace, list], Sequence[float]],
                 threshold: float = 1e6, n_drop: int | None = None,
                 train: Callable[[SearchSpace, int], None] | None = None, samples_per_op: int = 1000,
                 generator: torch.Generator | None = None, max_rounds: int = 1000, min_choices: int = 1
                 ) -> tuple[SearchSpace, list[dict]]:
    """Spec §2 schedule: while |space| > threshold, train (``train(space, round)``, e.g. E_i more supernet
    epochs on the current space), score and drop: ``n_drop`` operators per round (SPOS: 7, FairNAS: 19) or,
    with ``n_drop=None``, the lowest one on every edge that keeps more than ``min_choices`` (DARTS). Returns
    the space and one record per round."""
    rounds = []
    for r in range(max_rounds):
        if space.size <= threshold:
            break
        if train is not None:
            train(space, r)
        archs = candidate_archs(space, samples_per_op, generator)
        scores = operator_scores(space, archs, score(space, archs))
        dropped = select_drops(space, scores, n_drop) if n_drop else per_edge_drops(space, scores, min_choices)
        if not dropped:
            break  # every decision is down to one choice
        rounds.append({"round": r, "size_before": space.size, "children": len(archs),
                       "dropped": [list(op) for op in dropped]})
        space = without(space, dropped)
        rounds[-1]["size_after"] = space.size
    return space, rounds


# --- the NB201 pipeline: train a uniform supernet, score all children, drop, write shrink.json ------
def _ground_truth(space: SearchSpace, archs: Sequence[Architecture]) -> np.ndarray | None:
    """NB201 CIFAR-10 test accuracy of each child, or None for spaces without a table (cheap: direct indexing)."""
    from .spaces.nb201 import NB201Space

    if not isinstance(space, NB201Space):
        return None
    from .tabular.nb201 import load_table

    table = load_table()
    return table.accuracy[[table.index[space.to_string(a)] for a in archs], 0]


def abs_shrink(config, data, out_dir, device: str | torch.device = "cpu", n_drop: int | None = None,
               resume: bool = False, overwrite: bool = False, progress: bool = True, **darts_options) -> SearchSpace:
    """Train a uniform single-path supernet with ``config`` (strategy forced to "random"), score every child
    of the space by its angle, drop ``n_drop`` operators (default 2/3 of them), write ``shrink.json`` into
    ``out_dir`` and return the shrunk space (``load_shrunk_space(out_dir)`` gives it back later).

    The DARTS space follows ABS's DARTS protocol instead (``abs_darts.abs_shrink_darts``: rounds, one drop per
    edge each, so ``n_drop`` does not apply); ``darts_options`` are its settings (``samples_per_op``,
    ``tie_cells``, ``two_inputs``, ``threshold``)."""
    from .angle import angles_of, check_space, initial_state
    from .runs import RunFolder, atomic_write
    from .spaces import create_space
    from .spaces.darts import DARTSSpace
    from .trainer import Search

    if isinstance(create_space(config.space, **config.space_options), DARTSSpace):
        if n_drop is not None:
            raise UserError("abs on darts drops the lowest operator of every edge each round (ABS's DARTS rule); "
                            "leave out --drop")
        from .abs_darts import abs_shrink_darts

        return abs_shrink_darts(config, data, out_dir, device, resume=resume, overwrite=overwrite,
                                progress=progress, **darts_options)
    if darts_options:
        raise UserError(f"abs: {sorted(darts_options)} apply to the darts space only")
    # the supernet is trained by uniform single-path sampling: ABS's own per-cell sampler where the preset asks
    # for it (the `abs` presets), else one architecture shared by all cells
    sampler = config.strategy if config.strategy in UNIFORM_SAMPLERS else "random"
    keep = {k: v for k, v in config.strategy_options.items() if k in ("candidates", "cells")}
    if sampler == "abs_uniform":  # one sample per cell of the NB201 network this config builds
        keep.setdefault("cells", 3 * config.cells_per_stage)
    config = config.replace(strategy=sampler, strategy_options=keep)
    check_space(create_space(config.space, **config.space_options))  # before hours of training, not after
    out = Path(out_dir)
    # Under the folder's lock for the whole run, shrink.json included; an error before the first checkpoint (a
    # setting the data cannot meet, say) puts back the run that --overwrite replaced, byte for byte.
    with RunFolder(out, config.to_dict(), resume=resume, overwrite=overwrite,
                   defaults=type(config)().to_dict()) as folder:
        search = Search(config, data, torch.device(device))
        # the sampler's own result (the best of its candidates on validation data) is not what a shrink is for,
        # and validating 100 children of ABS's C=16, N=5 supernet takes longer than an epoch: one sampled child
        search.strategy.derive_by_validation = 1
        theta0_file = out / "theta0.pt"
        (out / "shrink.json").unlink(missing_ok=True)  # a stale result must not outlive a new run
        if folder.resumed_state is not None:
            if not theta0_file.exists():
                raise UserError(f"{theta0_file} is missing: ABS needs the initial weights; start again with "
                                "--overwrite")
            theta0 = torch.load(theta0_file, map_location="cpu", weights_only=True)
            folder.restore(search.load_state_dict)  # a state that does not fit: one line
        else:
            theta0 = initial_state(search.model)  # the weights at initialisation, before any step
            atomic_write(theta0_file, lambda handle: torch.save(theta0, handle))
        search.run(folder, progress=progress)

        space = search.space
        start = time.perf_counter()
        archs = candidate_archs(space)
        angles = angles_of(space, theta0, search.model.state_dict(), archs)
        seconds = time.perf_counter() - start
        scores = operator_scores(space, archs, angles)
        n_drop = default_drop(space) if n_drop is None else n_drop
        dropped = select_drops(space, scores, n_drop)
        shrunk = without(space, dropped)

        gt_rank = {}
        accuracy = _ground_truth(space, archs)
        if accuracy is not None:  # rank of each operator by the mean true accuracy of its children (1 = best)
            a = np.asarray(archs)
            position = {d.name: i for i, d in enumerate(space.decisions)}
            truth = {op: accuracy[a[:, position[op[0]]] == space.decisions[position[op[0]]].choices.index(op[1])].mean()
                     for op in scores}
            gt_rank = {op: r + 1 for r, op in enumerate(sorted(truth, key=lambda op: -truth[op]))}
        record = {
            "space": config.space, "space_options": config.space_options, "seed": config.seed,
            "size_before": space.size, "size_after": shrunk.size, "children_scored": len(archs),
            "angle_seconds": round(seconds, 3), "n_drop": n_drop,
            "kept": {d.name: list(d.choices) for d in shrunk.decisions if isinstance(d, Categorical)},
            "scores": {d.name: {c: scores[(d.name, c)] for c in d.choices if (d.name, c) in scores}
                       for d in space.decisions},
            "dropped": [{"decision": op[0], "op": op[1], "score": scores[op],
                         **({"gt_rank": gt_rank[op]} if gt_rank else {})} for op in dropped],
        }
        if gt_rank:
            record["gt_rank"] = {d.name: {c: gt_rank[(d.name, c)] for c in d.choices if (d.name, c) in gt_rank}
                                 for d in space.decisions}
        atomic_write(out / "shrink.json", json.dumps(record, indent=2).encode())  # a kill leaves no half file
    return shrunk


def load_shrunk_space(run_dir) -> SearchSpace:
    """The space an ABS run kept (``--space-from RUN_DIR``)."""
    from .spaces import create_space

    path = Path(run_dir) / "shrink.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: point --space-from at a finished ABS run folder") from None
    except ValueError:
        raise UserError(f"{path} is corrupt: run the ABS shrinking again") from None
    return create_space(record["space"], **record["space_options"]).restrict(record["kept"])
