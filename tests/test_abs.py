"""ABS: the angle metric, its fast all-children path, operator scores and the shrinking rules (spec abs.md)."""

import json
import math

import numpy as np
import pytest
import torch

from oneshot.angle import PATHS, angle, angles_of, child_vector, initial_state, magnitudes_of
from oneshot.config import preset
from oneshot.errors import UserError
from oneshot.shrinking import (abs_shrink, candidate_archs, default_drop, drop_operators, drop_per_edge,
                               load_shrunk_space, operator_scores, select_drops, shrink_until)
from oneshot.spaces import Categorical, SearchSpace, create_space
from oneshot.spaces.nb201 import EDGES


def tiny(ops=5, seed=0):
    """A C=2, one-cell-per-stage supernet, its θ0, and θ = θ0 + noise standing in for training."""
    torch.manual_seed(seed)
    space = create_space("nb201", ops=ops)
    model = space.build_supernet(channels=2, cells_per_stage=1)
    theta0 = initial_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return space, theta0, model.state_dict()


# --- the angle on hand-made vectors (spec §1 unit tests) ----------------------------------------------
def test_angle_hand_values():
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(math.pi / 4, abs=1e-12)
    pool = torch.full((9,), 1 / 9)  # the 3x3 pool placeholder for C = 1, identical in V0 and V
    v0, v = torch.cat([torch.tensor([1.0, 0.0]), pool]), torch.cat([torch.tensor([0.0, 1.0]), pool])
    assert angle(v0, v) == pytest.approx(1.4706289, abs=1e-6)  # arccos(0.1)
    w = torch.randn(50, dtype=torch.float64)
    assert angle(w, w) == pytest.approx(0.0, abs=1e-6)
    u = torch.randn(50, dtype=torch.float64)
    assert angle(w, 3.7 * u) == pytest.approx(angle(w, u), abs=1e-12)
    assert angle(w, -w) == pytest.approx(math.pi, abs=1e-6)


def test_paths_are_the_four_input_output_paths():
    named = [tuple(EDGES[e] for e in p) for p in PATHS]
    assert named == [((3, 0),), ((2, 0), (3, 2)), ((1, 0), (2, 1), (3, 2)), ((1, 0), (3, 1))]


# --- which weights form the vector ------------------------------------------------------------------
HEAD = 1316  # parameters outside the cells of the C=2, N=1 supernet (stem, 2 reductions, classifier), by hand


def test_vector_drops_paths_through_none_and_adds_pool_placeholders():
    space, _, state = tiny()
    # edge 1<-0 none kills 0->1->2->3 and 0->1->3 (their convs on 2<-1 and 3<-1 must not appear);
    # 0->3 is a skip (adds nothing); 0->2->3 is pool then conv1x1.
    arch = space.from_string("|none~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    v = child_vector(space, state, arch)
    head = [k for k in state if ".edges." not in k and not k.endswith(("running_mean", "running_var", "tracked"))]
    expected = [state[k].flatten().double() for k in head]
    assert sum(len(t) for t in expected) == HEAD
    conv1x1 = space.decisions[5].choices.index("nor_conv_1x1")
    for layer, c in ((0, 2), (2, 4), (4, 8)):
        expected += [torch.full((9 * c,), 1 / 9, dtype=torch.float64),
                     state[f"layers.{layer}.edges.5.ops.{conv1x1}.conv.weight"].flatten().double()]
    assert len(v) == HEAD + sum(9 * c + c * c for c in (2, 4, 8))
    assert torch.equal(v, torch.cat(expected))
    # a cell of 'none' everywhere adds nothing; skip/pool-only cells add only placeholders
    none = space.from_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert len(child_vector(space, state, none)) == HEAD
    skips = space.from_string("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|")
    assert len(child_vector(space, state, skips)) == HEAD + 9 * (2 + 4 + 8)


def test_shared_edges_repeat_once_per_path():
    space, _, state = tiny()
    # conv3x3 everywhere: per cell 0->3 has 1 conv, 0->2->3 has 2, 0->1->2->3 has 3, 0->1->3 has 2
    arch = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    assert len(child_vector(space, state, arch)) == HEAD + 8 * sum(9 * c * c for c in (2, 4, 8))


# --- fast path == explicit vectors --------------------------------------------------------------------
@pytest.mark.parametrize("ops", [4, 5])
def test_fast_angles_equal_reference(ops):
    space, theta0, state = tiny(ops)
    g = torch.Generator().manual_seed(1)
    archs = [space.sample(g) for _ in range(25)]
    if ops == 5:
        archs += [(0,) * 6, (0, 3, 3, 1, 4, 2), (2, 0, 3, 3, 0, 4)]  # all none; none on some paths
    fast = angles_of(space, theta0, state, archs)
    ref = [angle(child_vector(space, theta0, a), child_vector(space, state, a)) for a in archs]
    assert fast.tolist() == pytest.approx(ref, abs=1e-10)
    mags = magnitudes_of(space, state, archs)
    assert mags.tolist() == pytest.approx([child_vector(space, state, a).norm().item() for a in archs], rel=1e-10)


def test_restricted_space_scored_with_the_full_supernet():
    space, theta0, state = tiny(5)
    small = space.restrict({"edge10": ["nor_conv_3x3", "none"], "edge32": ["avg_pool_3x3"]})
    full_ops = [d.choices for d in space.decisions]
    archs = list(small.enumerate())[:40]
    fast = angles_of(small, theta0, state, archs, supernet_ops=full_ops)
    same = [space.from_string(small.to_string(a)) for a in archs]  # the same cells, as full-space tuples
    assert fast.tolist() == pytest.approx(angles_of(space, theta0, state, same).tolist(), abs=1e-12)


def test_angle_sees_only_the_weights_that_moved():
    """Rotate one conv's weights only: exactly the children holding that conv on a live path turn."""
    space = create_space("nb201", ops=5)
    model = space.build_supernet(channels=2, cells_per_stage=1)
    theta0 = initial_state(model)
    k = space.decisions[3].choices.index("nor_conv_3x3")   # edge 3<-0: the 0->3 path alone
    with torch.no_grad():
        for layer in (0, 2, 4):
            w = model.layers[layer].edges[3].ops[k].conv.weight
            w.copy_(torch.randn_like(w))
    archs = list(space.enumerate())
    angles = angles_of(space, theta0, model.state_dict(), archs)
    moved = torch.tensor([a[3] == k for a in archs])
    assert (angles[~moved].abs() < 1e-6).all() and (angles[moved] > 1e-3).all()
    scores = operator_scores(space, archs, angles)
    assert max(scores, key=scores.get) == ("edge30", "nor_conv_3x3")


def test_other_spaces_are_refused():
    space = SearchSpace([Categorical("a", ("x", "y"))])
    with pytest.raises(UserError, match="nb201"):
        angles_of(space, {}, {}, [(0,)])


# --- operator scores and drop rules -------------------------------------------------------------------
TOY = SearchSpace([Categorical("e", ("x", "y")), Categorical("f", ("a", "b"))])


def test_operator_score_is_mean_angle_of_children_holding_it():
    scores = operator_scores(TOY, [(0, 0), (0, 1), (1, 0)], [0.5, 0.7, 0.9])
    assert scores[("e", "x")] == pytest.approx(0.6)
    assert scores[("e", "y")] == pytest.approx(0.9)
    assert scores[("f", "a")] == pytest.approx(0.7)
    assert scores[("f", "b")] == pytest.approx(0.7)
    single = SearchSpace([Categorical("e", ("x", "y")), Categorical("g", ("only",))])
    assert ("g", "only") not in operator_scores(single, [(0, 0), (1, 0)], [1.0, 2.0])


def test_drop_lowest_first_but_never_a_decisions_last_choice():
    space = SearchSpace([Categorical("e", ("a", "b", "c")), Categorical("f", ("u", "v"))])
    scores = {("e", "a"): 0.1, ("e", "b"): 0.2, ("e", "c"): 0.3, ("f", "u"): 0.15, ("f", "v"): 0.05}
    # ascending: f.v, e.a, f.u (f's last: skipped), e.b, e.c (last)
    assert select_drops(space, scores, 2) == [("f", "v"), ("e", "a")]
    assert select_drops(space, scores, 10) == [("f", "v"), ("e", "a"), ("e", "b")]
    small = drop_operators(space, scores, 2)
    assert [d.choices for d in small.decisions] == [("b", "c"), ("u",)]
    assert [d.choices for d in drop_per_edge(space, scores).decisions] == [("b", "c"), ("u",)]


def test_nb201_drop_never_empties_an_edge_and_restricted_space_enumerates_the_product():
    space = create_space("nb201", ops=5)
    assert default_drop(space) == 20 and default_drop(create_space("nb201", ops=4)) == 16
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = {(d.name, c): float(rng.random()) for d in space.decisions for c in d.choices}
        small = drop_operators(space, scores, 20)
        sizes = [d.size for d in small.decisions]
        assert min(sizes) >= 1 and sum(sizes) == 10
        assert small.size == math.prod(sizes) == len(list(small.enumerate()))
        kept = {(d.name, c) for d in small.decisions for c in d.choices}
        for arch in small.enumerate():
            assert {(d.name, d.choices[v]) for d, v in zip(small.decisions, arch)} <= kept
        everything = drop_operators(space, scores, 30)   # asks for all 30: only 24 can go
        assert [d.size for d in everything.decisions] == [1] * 6


def test_candidate_sampling_credits_every_operator():
    space = SearchSpace([Categorical(f"d{i}", tuple("abcde")) for i in range(10)])  # 5^10 ~ 1e7: sampled
    archs = candidate_archs(space, samples_per_op=20, generator=torch.Generator().manual_seed(0))
    assert len(set(archs)) == len(archs)
    counts = np.zeros((10, 5), dtype=int)
    for a in archs:
        counts[np.arange(10), a] += 1
    assert counts.min() >= 20


def test_shrink_until_reaches_the_threshold_per_edge():
    space = SearchSpace([Categorical(f"d{i}", tuple("abcd")) for i in range(8)])   # 4^8 = 65,536
    trained = []
    score = lambda sp, archs: [sum(a) for a in archs]  # later choices look better: 'a' goes first
    small, rounds = shrink_until(space, score, threshold=300, train=lambda sp, r: trained.append(sp.size))
    assert [r["size_after"] for r in rounds] == [3 ** 8, 2 ** 8] and small.size == 256
    assert trained == [65536, 6561]
    assert all(d.choices == ("c", "d") for d in small.decisions)


# --- the pipeline --------------------------------------------------------------------------------------
def test_abs_shrink_writes_a_loadable_space(tmp_path, synthetic_cifar):
    config = preset("smoke", space_options={"ops": 5}, strategy_options={"candidates": 2}, n_weight=64,
                    n_arch=64, batch_size=32, epochs=1, warmup_epochs=0)  # 2 weight steps: the plumbing only
    shrunk = abs_shrink(config, synthetic_cifar, tmp_path / "abs", progress=False)
    record = json.loads((tmp_path / "abs" / "shrink.json").read_text())
    assert record["children_scored"] == 15625 and len(record["dropped"]) == 20
    assert sum(len(v) for v in record["kept"].values()) == 10 and shrunk.size == record["size_after"]
    assert all(1 <= d["gt_rank"] <= 30 for d in record["dropped"])
    dropped_scores = [d["score"] for d in record["dropped"]]
    assert dropped_scores == sorted(dropped_scores)
    loaded = load_shrunk_space(tmp_path / "abs")
    assert [d.choices for d in loaded.decisions] == [d.choices for d in shrunk.decisions]
    with pytest.raises(UserError, match="space-from"):
        load_shrunk_space(tmp_path / "nothing")


def test_nb201_network_vector_holds_lastact_and_fast_equals_reference():
    """NB201's own network (op_style nb201, as ABS trains it) ends with lastact's BN: its affine weights join the
    head/tail exactly as the official get_head/fixed_cell/tail_vector list them, and fast == explicit vectors."""
    torch.manual_seed(0)
    space = create_space("nb201", ops=5)
    model = space.build_supernet(channels=2, cells_per_stage=1, op_style="nb201", op_bn_affine=False)
    theta0 = initial_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    state = model.state_dict()
    block = ("body.1.weight", "body.2.weight", "body.2.bias", "body.4.weight", "body.5.weight", "body.5.bias",
             "shortcut.1.weight")  # conv_a conv + BN, conv_b conv + BN, downsample conv
    official = (["stem.0.weight", "stem.1.weight", "stem.1.bias"] + [f"layers.{r}.{k}" for r in (1, 3) for k in block]
                + ["lastact.0.weight", "lastact.0.bias", "classifier.weight", "classifier.bias"])
    all_none = space.from_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    head = child_vector(space, state, all_none)
    assert len(head) == HEAD + 2 * 8  # lastact BN: weight and bias of the 8 final channels
    assert torch.equal(head, torch.cat([state[k].flatten().double() for k in official]))
    g = torch.Generator().manual_seed(2)
    archs = [space.sample(g) for _ in range(20)] + [all_none, (2, 0, 3, 3, 0, 4)]
    fast = angles_of(space, theta0, state, archs)
    ref = [angle(child_vector(space, theta0, a), child_vector(space, state, a)) for a in archs]
    assert fast.tolist() == pytest.approx(ref, abs=1e-10)
