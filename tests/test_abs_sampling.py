"""ABS's NB201 supernet sampling: a uniform child per cell, re-drawing a node whose inputs are all 'none'."""

import itertools

import pytest
import torch

from oneshot.abs_sampling import op_marginals, per_cell_active, sample_cells
from oneshot.errors import UserError
from oneshot.spaces import create_space

SPACE5 = create_space("nb201", ops=5)   # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
N = 24_000
# Hand-computed from the rule (a node's edges are uniform over the not-all-none combinations):
# node 1: 4 ops left; node 2: 24 pairs, 'none' in 4 of them; node 3: 124 triples, 'none' on one edge in 24.
NODE1, NODE2, NODE3 = [0, 1 / 4, 1 / 4, 1 / 4, 1 / 4], [4 / 24] + [5 / 24] * 4, [24 / 124] + [25 / 124] * 4
EXPECTED = torch.tensor([NODE1, NODE2, NODE2, NODE3, NODE3, NODE3], dtype=torch.float64)  # rows in EDGES order


@pytest.fixture(scope="module")
def many_cells():
    return torch.tensor(sample_cells(SPACE5, N, torch.Generator().manual_seed(0)))


def test_exact_marginals_match_the_hand_computed_rule():
    assert torch.allclose(op_marginals(SPACE5), EXPECTED, atol=1e-12)


def test_sampled_op_frequencies_match_the_rule(many_cells):
    freq = torch.stack([torch.bincount(many_cells[:, e], minlength=5) for e in range(6)]).double() / N
    # standard error <= 0.0029 at N = 24k; 0.012 is > 4 of them, and 'no re-draw' moves node 2's 'none' by 0.033
    assert torch.allclose(freq, EXPECTED, atol=0.012), freq


def test_no_node_is_fed_by_none_alone(many_cells):
    none = many_cells == 0
    assert not none[:, 0].any()                       # node 1 <- 0
    assert not (none[:, 1] & none[:, 2]).any()        # node 2 <- 0, 1
    assert not (none[:, 3] & none[:, 4] & none[:, 5]).any()  # node 3 <- 0, 1, 2


def test_node_2_is_uniform_over_its_24_allowed_pairs(many_cells):
    """Re-drawing the whole node (not one edge, not 'none' banned) makes all 24 pairs equally likely."""
    pairs = many_cells[:, 1] * 5 + many_cells[:, 2]
    freq = torch.bincount(pairs, minlength=25).double() / N
    allowed = [a * 5 + b for a, b in itertools.product(range(5), repeat=2) if (a, b) != (0, 0)]
    assert freq[0] == 0
    assert torch.allclose(freq[allowed], torch.full((24,), 1 / 24, dtype=torch.float64), atol=0.006), freq


def test_cells_are_drawn_independently(many_cells):
    """Consecutive cells agree on edge 1->0 as often as two independent draws do (sum_k p_k^2 = 1/4), not always."""
    agree = (many_cells[1:, 0] == many_cells[:-1, 0]).double().mean().item()
    assert agree == pytest.approx(0.25, abs=0.015)
    archs = sample_cells(SPACE5, 15, torch.Generator().manual_seed(3))
    assert len(archs) == 15 and len(set(archs)) > 1


def test_same_seed_same_cells_and_archs_are_valid():
    a = sample_cells(SPACE5, 15, torch.Generator().manual_seed(7))
    b = sample_cells(SPACE5, 15, torch.Generator().manual_seed(7))
    c = sample_cells(SPACE5, 15, torch.Generator().manual_seed(8))
    assert a == b != c
    assert all(SPACE5.check(arch) == arch for arch in a)


def test_shrunk_space_follows_the_rule_on_the_ops_left():
    small = SPACE5.restrict({"edge10": ["none", "skip_connect"], "edge20": ["none"], "edge21": ["none", "nor_conv_1x1"]})
    archs = torch.tensor(sample_cells(small, 2000, torch.Generator().manual_seed(1)))
    assert (archs[:, 0] == 1).all()        # node 1: 'none' is re-drawn until skip_connect comes
    assert (archs[:, 2] == 1).all()        # node 2: its only non-none input must be the conv on 1->2
    marg = op_marginals(small)
    assert marg[0, :2].tolist() == [0.0, 1.0] and marg[1, 0] == 1.0 and marg[2, :2].tolist() == [0.0, 1.0]
    # node 3 keeps all 5 ops on its 3 edges: the full space's numbers
    assert torch.allclose(marg[3:], EXPECTED[3:], atol=1e-12)


def test_space_four_ops_is_plain_uniform():
    archs = torch.tensor(sample_cells(create_space("nb201"), 8000, torch.Generator().manual_seed(2)))
    freq = torch.stack([torch.bincount(archs[:, e], minlength=4) for e in range(6)]).double() / 8000
    assert torch.allclose(freq, torch.full((6, 4), 0.25, dtype=torch.float64), atol=0.02)
    assert torch.allclose(op_marginals(create_space("nb201")), torch.full((6, 4), 0.25, dtype=torch.float64))


def test_bad_inputs_name_the_fix():
    with pytest.raises(UserError, match="node 1"):
        sample_cells(SPACE5.restrict({"edge10": ["none"]}), 3)
    with pytest.raises(UserError, match="n_cells"):
        sample_cells(SPACE5, 0)
    with pytest.raises(UserError, match="nb201 space"):
        sample_cells(create_space("enas_micro"), 3)


def test_per_cell_active_maps_to_the_supernet_op_positions():
    small = SPACE5.restrict({"edge10": ["nor_conv_3x3", "avg_pool_3x3"]})
    arch = (1, 0, 2, 3, 4, 1)  # edge10 -> avg_pool_3x3, which sits at position 4 in the full supernet
    full_ops = [d.choices for d in SPACE5.decisions]
    assert per_cell_active(small, [arch], full_ops) == [[[4], [0], [2], [3], [4], [1]]]
    assert per_cell_active(small, [arch]) == [[[1], [0], [2], [3], [4], [1]]]
    with pytest.raises(UserError, match="no \\['avg_pool_3x3'\\]"):
        per_cell_active(small, [arch], [["nor_conv_3x3"]] + full_ops[1:])


def test_every_cell_of_the_supernet_runs_its_own_sampled_ops():
    """Forward hooks on every op record which ran where: exactly each cell's own sampled ops."""
    torch.manual_seed(0)
    net = SPACE5.build_supernet(channels=4, cells_per_stage=2, op_style="nb201", op_bn_affine=False)
    cells = [m for m in net.modules() if m.__class__.__name__ == "Cell"]
    ran = set()
    for c, cell in enumerate(cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge.ops):
                op.register_forward_hook(lambda mod, inp, out, key=(c, e, k): ran.add(key))
    archs = sample_cells(SPACE5, len(cells), torch.Generator().manual_seed(5))
    assert len(set(archs)) > 1
    out = net(torch.randn(4, 3, 32, 32), None, per_cell_active(SPACE5, archs))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert ran == {(c, e, k) for c, arch in enumerate(archs) for e, k in enumerate(arch)}


def test_abs_supernet_initial_loss_is_finite_and_small():
    """ABS's network (NB201 with lastact, affine-free op BNs) at C=16, N=5 starts near ln 10, for the all-skip
    child (~1e7 without lastact: the 15 residual sums compound) and for a per-cell sampled step."""
    torch.manual_seed(0)
    net = SPACE5.build_supernet(channels=16, cells_per_stage=5, op_style="nb201", op_bn_affine=False)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 3, 32, 32, generator=g) - 0.48) / 0.25
    y = torch.randint(10, (8,), generator=g)
    all_skip = per_cell_active(SPACE5, [(1,) * 6] * 15)
    sampled = per_cell_active(SPACE5, sample_cells(SPACE5, 15, g))
    for active in (all_skip, sampled):
        loss = torch.nn.functional.cross_entropy(net(x, None, active), y)
        assert torch.isfinite(loss) and loss.item() < 10
