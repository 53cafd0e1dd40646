"""ABS on the DARTS space (spec abs.md §1-§2, official megvii-model/AngleNAS DARTS/shrinking): the angle vector
counted by hand, the per-edge drop rule, ABS's two-input children and the shrink-then-search pipeline."""

import json
import math

import numpy as np
import pytest
import torch

from oneshot.abs_darts import SharedCells, _theta0, DartsShrinkSearch, score_operators, two_input_child
from oneshot.angle import DARTS_PATHS, angle, angles_of, child_vector, initial_state
from oneshot.config import preset
from oneshot.errors import UserError
from oneshot.shrinking import abs_shrink, operator_scores, per_edge_drops, planned_rounds, round_ends
from oneshot.spaces.base import Categorical, SearchSpace
from oneshot.spaces.darts import EDGES, Genotype, DARTSSpace, output_paths

SPACE = DARTSSpace(cells=3)  # cell 0 normal (C=2), cells 1 and 2 reduction (C=4, C=8) at channels=2
SEP = lambda k, c: 2 * (k * k * c + c * c)  # two depthwise k x k + two pointwise 1x1 convs
DIL = lambda k, c: k * k * c + c * c        # one depthwise + one pointwise
POOL = lambda c: 9 * c                      # the C x 3 x 3 block of 1/9
# By hand, channels=2: stem 3->6 3x3 (162); cell 0: pre0, pre1 6->2 1x1 (12 + 12); cell 1: pre0 6->4, pre1 8->4
# (24 + 32); cell 2 (after a reduction): pre0 FactorizedReduce 8->8 = two 8->4 convs (64), pre1 16->8 (128);
# classifier 32->10 weight (320). No BN weight, no bias.
FIXED = 162 + (12 + 12) + (24 + 32) + (64 + 128) + 320
FIXED_KEYS = ["stem.0.weight", "cells.0.pre0.1.weight", "cells.0.pre1.1.weight", "cells.1.pre0.1.weight",
              "cells.1.pre1.1.weight", "cells.2.pre0.convs.0.weight", "cells.2.pre0.convs.1.weight",
              "cells.2.pre1.1.weight", "classifier.weight"]
HAND = Genotype(
    # edges 0->2 sep3, 1->2 skip, 2->3 dil3, 0->3 max pool, 3->4 skip, 1->4 sep5, 4->5 avg pool, 2->5 dil5
    normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0),
            ("skip_connect", 3), ("sep_conv_5x5", 1), ("avg_pool_3x3", 4), ("dil_conv_5x5", 2)),
    normal_concat=(2, 3, 4, 5),
    # edges 0->2 max pool, 1->2 dil3, 0->3 skip (stride 2: FactorizedReduce), 2->3 sep3, 1->4 sep3, 3->4 skip,
    # 3->5 sep5, 4->5 avg pool
    reduce=(("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
            ("sep_conv_3x3", 1), ("skip_connect", 3), ("sep_conv_5x5", 3), ("avg_pool_3x3", 4)),
    reduce_concat=(2, 3, 4, 5))


def normal_by_hand(c):
    """The 6 live paths of HAND's normal cell: 0-2-3-4-5 sep3 dil3 pool | 0-2-5 sep3 dil5 | 0-3-4-5 pool pool |
    1-2-3-4-5 dil3 pool | 1-2-5 dil5 | 1-4-5 sep5 pool (the other 10 cross a 'none' edge)."""
    return 2 * SEP(3, c) + 2 * DIL(3, c) + 2 * DIL(5, c) + SEP(5, c) + 5 * POOL(c)


def reduce_by_hand(c):
    """The 8 live paths of HAND's reduction cell: 0-2-3-4-5 pool sep3 pool | 0-2-3-5 pool sep3 sep5 |
    0-3-4-5 pool | 0-3-5 sep5 | 1-2-3-4-5 dil3 sep3 pool | 1-2-3-5 dil3 sep3 sep5 | 1-4-5 sep3(1->4) pool.
    Edge 2->3 lies on 4 paths, 3->5 on 3, 1->2 and 0->2 (max pool) on 2, 4->5 (avg pool) on 4: each repeats
    per path (6 pool blocks)."""
    return 6 * POOL(c) + 5 * SEP(3, c) + 3 * SEP(5, c) + 2 * DIL(3, c)


def supernet(channels=2, seed=0):
    torch.manual_seed(seed)
    return SPACE.build_supernet(channels=channels, input_shape=(3, 8, 8))


def arch_of(normal: dict, reduce: dict):
    """An architecture from {(target, source): op} per cell type, every other edge 'none'."""
    names = [normal.get(e, "none") for e in EDGES] + [reduce.get(e, "none") for e in EDGES]
    return tuple(d.choices.index(n) for d, n in zip(SPACE.decisions, names))


def moved(model, scale=0.5, seed=1):
    theta0 = initial_state(model)
    g = torch.Generator().manual_seed(seed)
    state = {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in theta0.items()}
    return theta0, state


# --- the vector (spec §1) ---------------------------------------------------------------------------------
def test_output_paths_are_the_16_official_ones():
    official = [[0, 2, 3, 4, 5], [0, 2, 3, 5], [0, 2, 4, 5], [0, 2, 5], [0, 3, 4, 5], [0, 3, 5], [0, 4, 5], [0, 5],
                [1, 2, 3, 4, 5], [1, 2, 3, 5], [1, 2, 4, 5], [1, 2, 5], [1, 3, 4, 5], [1, 3, 5], [1, 4, 5], [1, 5]]
    assert [list(p) for p in output_paths()] == official
    assert sum(len(p) for p in DARTS_PATHS) == 40  # edges over all paths: 2x4 + 6x3 + 6x2 + 2x1


def test_hand_picked_genotype_vector_length():
    state = supernet().state_dict()
    arch = SPACE.from_genotype(HAND)
    expected = FIXED + normal_by_hand(2) + reduce_by_hand(4) + reduce_by_hand(8)
    assert expected == 6376
    assert len(child_vector(SPACE, state, arch)) == expected


def test_fixed_part_is_stem_preprocess_and_classifier_weights_only():
    """An all-skip child adds nothing (even stride-2 skips, FactorizedReduce with weights): its vector is exactly
    the fixed convs and the classifier weight, in state order; no BN affine, no classifier bias."""
    state = supernet().state_dict()
    skips = tuple(d.choices.index("skip_connect") for d in SPACE.decisions)
    vector = child_vector(SPACE, state, skips)
    assert len(vector) == FIXED
    assert torch.equal(vector, torch.cat([state[k].double().flatten() for k in FIXED_KEYS]))
    nones = tuple(d.choices.index("none") for d in SPACE.decisions)
    assert len(child_vector(SPACE, state, nones)) == FIXED


def test_a_none_on_the_path_drops_it():
    state = supernet().state_dict()
    direct = arch_of({(5, 0): "sep_conv_3x3"}, {})                                     # path 0-5 only
    assert len(child_vector(SPACE, state, direct)) == FIXED + SEP(3, 2)
    # 0->2 sep5 feeds node 2, but 2->5 is none: path 0-2-5 is dropped with the sep5 on it
    dead_end = arch_of({(5, 0): "sep_conv_3x3", (2, 0): "sep_conv_5x5"}, {})
    assert len(child_vector(SPACE, state, dead_end)) == FIXED + SEP(3, 2)
    alive = arch_of({(5, 0): "sep_conv_3x3", (2, 0): "sep_conv_5x5", (5, 2): "skip_connect"}, {})
    assert len(child_vector(SPACE, state, alive)) == FIXED + SEP(3, 2) + SEP(5, 2)


def test_all_pool_cells_give_40_constant_blocks_per_cell():
    state = supernet().state_dict()
    pools = tuple(d.choices.index("max_pool_3x3") for d in SPACE.decisions)
    vector = child_vector(SPACE, state, pools)
    assert len(vector) == FIXED + 40 * (POOL(2) + POOL(4) + POOL(8))
    assert torch.all(vector[FIXED:] == 1 / 9)


def test_fast_angles_equal_the_explicit_vectors():
    model = supernet()
    theta0, state = moved(model)
    g = torch.Generator().manual_seed(3)
    archs = [SPACE.sample(g) for _ in range(25)] + [SPACE.from_genotype(HAND)]
    fast = angles_of(SPACE, theta0, state, archs)
    ref = [angle(child_vector(SPACE, theta0, a), child_vector(SPACE, state, a)) for a in archs]
    assert fast.tolist() == pytest.approx(ref, abs=1e-10)
    assert min(ref) > 0.05  # the weights moved: a real test, not 0 == 0
    # a shrunk space scored on the full supernet: same children, same angles
    small = SPACE.restrict({d.name: ["none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"] for d in SPACE.decisions})
    small_archs = [small.sample(g) for _ in range(10)]
    same = [tuple(SPACE.decisions[i].choices.index(small.decisions[i].choices[k]) for i, k in enumerate(a))
            for a in small_archs]
    full_ops = [d.choices for d in SPACE.decisions]
    assert angles_of(small, theta0, state, small_archs, supernet_ops=full_ops).tolist() == pytest.approx(
        angles_of(SPACE, theta0, state, same).tolist(), abs=1e-12)


def split_like(vector, state, keys):
    out, at = {}, 0
    for k in keys:
        n = state[k].numel()
        out[k] = vector[at:at + n].reshape(state[k].shape).float()
        at += n
    return out


def test_angle_unit_values_pi_over_4_and_pool_arccos_0_1():
    """Spec §1: (1, 0) -> (1, 1) is π/4; a conv part (1, 0) -> (0, 1) plus one C=1 pool block is arccos 0.1."""
    model = supernet()
    theta0, _ = moved(model)
    v0 = torch.cat([theta0[k].double().flatten() for k in FIXED_KEYS])
    w = torch.randn(v0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w -= (w @ v0) / (v0 @ v0) * v0
    w *= v0.norm() / w.norm()                     # V = V0 + W, W ⟂ V0, |W| = |V0|: 45 degrees
    state = {**{k: v + 3.0 for k, v in theta0.items() if v.is_floating_point()},  # everything else moves a lot
             **split_like(v0 + w, theta0, FIXED_KEYS)}
    state = {k: state.get(k, v) for k, v in theta0.items()}
    skips = tuple(d.choices.index("skip_connect") for d in SPACE.decisions)
    assert angles_of(SPACE, theta0, state, [skips]).item() == pytest.approx(math.pi / 4, abs=1e-6)

    model = supernet(channels=1)                  # the normal cell has C = 1
    theta0 = initial_state(model)
    keys = FIXED_KEYS
    unit0 = torch.zeros(sum(theta0[k].numel() for k in keys), dtype=torch.float64)
    unit1 = unit0.clone()
    unit0[0], unit1[1] = 1.0, 1.0
    theta0 = {**theta0, **split_like(unit0, theta0, keys)}
    state = {**theta0, **split_like(unit1, theta0, keys)}
    pool_only = arch_of({(5, 0): "avg_pool_3x3"}, {})  # one path, one 1 x 3 x 3 block of 1/9
    assert angles_of(SPACE, theta0, state, [pool_only]).item() == pytest.approx(math.acos(0.1), abs=1e-6)
    assert angle(child_vector(SPACE, theta0, pool_only), child_vector(SPACE, state, pool_only)) == \
        pytest.approx(1.4706289, abs=1e-6)


# --- the drop rule and schedule (spec §2) -----------------------------------------------------------------
def test_per_edge_drop_removes_exactly_each_edges_lowest_and_keeps_two():
    space = SearchSpace([Categorical("a", ("p", "q", "r")), Categorical("b", ("p", "q", "r", "s")),
                         Categorical("c", ("p", "q"))])
    scores = {("a", "p"): 0.5, ("a", "q"): 0.2, ("a", "r"): 0.9, ("b", "p"): 0.8, ("b", "q"): 0.7,
              ("b", "r"): 0.1, ("b", "s"): 0.6, ("c", "p"): 0.05, ("c", "q"): 0.5}
    assert per_edge_drops(space, scores, min_choices=2) == [("a", "q"), ("b", "r")]  # c is at 2 already
    assert per_edge_drops(space, scores, min_choices=1) == [("a", "q"), ("b", "r"), ("c", "p")]


def test_rounds_and_their_training_steps():
    assert planned_rounds([8] * 14, 1e6, 2) == 6            # 8^14 -> ... -> 3^14 = 4.8e6 -> 2^14 = 16,384
    assert planned_rounds([8] * 28, 1e6, 2) == 6            # untied: the floor of 2 stops it (2^28 > 1e6)
    assert planned_rounds([8] * 28, 1e6, 1) == 7
    assert planned_rounds([2] * 14, 1e6, 2) == 0
    assert round_ends(0, 250, 6) == [150, 170, 190, 210, 230, 250]   # ABS: 150 epochs, then 20 per round
    assert round_ends(0, 150, 6) == [90, 102, 114, 126, 138, 150]
    assert round_ends(8, 16, 6) == [11, 12, 13, 14, 15, 16]          # smoke: every round trains >= 1 step
    with pytest.raises(UserError, match="epochs"):
        round_ends(8, 12, 6)


def test_operator_score_cap_uses_the_first_children():
    toy = SearchSpace([Categorical("e", ("x", "y")), Categorical("f", ("a", "b"))])
    archs, angles = [(0, 0), (0, 1), (0, 0), (1, 0)], [0.5, 0.7, 0.1, 0.9]
    assert operator_scores(toy, archs, angles)[("e", "x")] == pytest.approx(1.3 / 3)
    assert operator_scores(toy, archs, angles, cap=2)[("e", "x")] == pytest.approx(0.6)


# --- ABS's children: one cell for both types, two inputs per node -------------------------------------------
def inputs_per_node(child, none):
    return [sum(child[e] != none[e] for e in range(len(EDGES)) if EDGES[e][0] == node) for node in range(2, 6)]


def test_two_input_children_as_check_cand():
    cells = SharedCells(SPACE)
    rng = np.random.default_rng(0)
    full = [list(range(8))] * 14
    for _ in range(200):
        assert inputs_per_node(two_input_child(full, cells.none, rng), cells.none) == [2, 2, 2, 2]
    # 'none' dropped from every list: still structural (official check_cand writes op 0 regardless)
    no_none = [list(range(1, 8))] * 14
    children = [two_input_child(no_none, cells.none, rng) for _ in range(50)]
    assert all(inputs_per_node(c, cells.none) == [2, 2, 2, 2] for c in children)
    # a node of 'none'-only edges stays without inputs; two_inputs=False is plain uniform
    only_none = [[0]] * 2 + [list(range(8))] * 12
    assert inputs_per_node(two_input_child(only_none, cells.none, rng), cells.none)[0] == 0
    plain = [inputs_per_node(two_input_child(full, cells.none, rng, two_inputs=False), cells.none) for _ in range(50)]
    assert max(max(p) for p in plain) > 2


def test_shared_cells_tie_normal_and_reduce():
    cells = SharedCells(SPACE)
    assert len(cells.base.decisions) == 14 and cells.base.decisions[0].name == "edge_2_0"
    child = list(range(14))
    child = [k % 8 for k in child]
    assert cells.full(child) == tuple(child) * 2
    kept = cells.kept(cells.base.restrict({"edge_2_0": ["none", "skip_connect"]}))
    assert kept["normal_2_0"] == kept["reduce_2_0"] == ["none", "skip_connect"] and len(kept) == 28
    assert len(SharedCells(SPACE, tie=False).base.decisions) == 28
    with pytest.raises(UserError, match="tie_cells"):
        SharedCells(SPACE.restrict({"normal_2_0": ["none"]}))


def test_scores_cover_the_kept_operators_only():
    model = supernet()
    theta0, state = moved(model)
    cells = SharedCells(SPACE)
    current = cells.base.restrict({d.name: [c for c in d.choices if c != "dil_conv_5x5"] for d in cells.base.decisions})
    scores, children, angles = score_operators(cells, current, theta0, state, 4, np.random.default_rng(0))
    assert set(scores) == {(d.name, c) for d in current.decisions for c in d.choices}
    dil5 = cells.base.decisions[0].choices.index("dil_conv_5x5")
    assert not any(dil5 in c for c in children) and len(set(children)) == len(children)
    assert angles.tolist() == pytest.approx(angles_of(SPACE, theta0, state, [cells.full(c) for c in children]).tolist())


# --- the pipeline -------------------------------------------------------------------------------------------
def tiny_config(**changes):
    return preset("smoke", space="darts", **{"n_weight": 64, "n_arch": 64, "epochs": 3, "warmup_epochs": 1,
                                             **changes})  # 4 steps per epoch: 4 warm-up, 8 for 6 rounds


def test_theta0_is_taken_after_warm_up(tmp_path, synthetic_cifar):
    from oneshot.runs import RunFolder

    config = tiny_config().replace(strategy="random")
    with RunFolder(tmp_path / "run", config.to_dict()) as folder:
        search = DartsShrinkSearch(config, synthetic_cifar, torch.device("cpu"))
        start = initial_state(search.model)
        theta0 = _theta0(search, folder, tmp_path / "run" / "theta0.pt", 4, progress=False)
    assert search.step == 4 and search.model.drop_path == 0.0
    assert all(torch.equal(theta0[k], v) for k, v in search.model.state_dict().items())
    assert not torch.equal(theta0["stem.0.weight"], start["stem.0.weight"])
    assert torch.equal(torch.load(tmp_path / "run" / "theta0.pt")["stem.0.weight"], theta0["stem.0.weight"])


def test_shrink_resumes_to_the_same_result(tmp_path, synthetic_cifar, monkeypatch):
    import oneshot.abs_darts as abs_darts

    config = tiny_config()
    whole = abs_shrink(config, synthetic_cifar, tmp_path / "whole", progress=False, samples_per_op=8)
    calls, real = [], abs_darts.score_operators

    def fail_in_round_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(abs_darts, "score_operators", fail_in_round_3)
    with pytest.raises(RuntimeError, match="killed"):
        abs_shrink(config, synthetic_cifar, tmp_path / "cut", progress=False, samples_per_op=8)
    assert not (tmp_path / "cut" / "shrink.json").exists()
    monkeypatch.setattr(abs_darts, "score_operators", real)
    resumed = abs_shrink(config, synthetic_cifar, tmp_path / "cut", progress=False, samples_per_op=8, resume=True)
    a, b = (json.loads((tmp_path / d / "shrink.json").read_text()) for d in ("whole", "cut"))
    timeless = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]
    assert len(a["rounds"]) == 6 and timeless(a["rounds"]) == timeless(b["rounds"])  # same weights, same scores
    assert a["kept"] == b["kept"] and [d.choices for d in whole.decisions] == [d.choices for d in resumed.decisions]
    with pytest.raises(UserError, match="ABS settings"):
        abs_shrink(config, synthetic_cifar, tmp_path / "cut", progress=False, samples_per_op=8, resume=True,
                   tie_cells=False)


def test_search_with_shrink_abs_on_darts_searches_the_kept_space(capsys, tmp_path, tiny_pickles, monkeypatch):
    from oneshot import abs_darts
    from oneshot.cli import main

    monkeypatch.setattr(abs_darts, "SAMPLES_PER_OP", 20)  # the default 1000 costs ~7 s more here
    out = tmp_path / "run"
    assert main(["search", "--space", "darts", "--shrink", "abs", "--preset", "smoke", "--strategy", "snas",
                 "--data", tiny_pickles, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    record = json.loads((out / "shrink" / "shrink.json").read_text())
    assert record["theta0_step"] == 0 and record["round_ends"] == [11, 12, 13, 14, 15, 16]  # darts smoke: no warm-up
    assert len(record["rounds"]) == 6 and record["list_size_after"] == 2 ** 14
    for r in record["rounds"]:
        assert len(r["dropped"]) == 14                      # one per shared edge
        for name, op in r["dropped"]:                       # ... the lowest-scoring one
            assert r["scores"][name][op] == min(r["scores"][name].values())
    kept = record["kept"]
    assert all(len(v) == 2 for v in kept.values()) and len(kept) == 28
    assert all(kept[f"normal_{j}_{i}"] == kept[f"reduce_{j}_{i}"] for j, i in EDGES)
    config = json.loads((out / "config.json").read_text())
    assert config["restrict"] == kept and config["strategy"] == "snas"
    result = json.loads((out / "result.json").read_text())
    shrunk = DARTSSpace().restrict(kept)
    arch = shrunk.from_string(result["architecture"])       # refuses any op the shrink dropped
    assert all(d.choices[k] in kept[d.name] for d, k in zip(shrunk.decisions, arch))
