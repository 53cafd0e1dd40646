import pytest
import torch

from oneshot.tabular.nb201 import load_table, lookup
from oneshot.errors import UserError
from oneshot.spaces import create_space
from oneshot.spaces.nb201 import child_from_supernet

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_space_sizes_and_decisions():
    assert create_space("nb201").size == 4 ** 6
    assert create_space("nb201", ops=5).size == 5 ** 6 == len(load_table().strings)
    assert [d.name for d in create_space("nb201").decisions] == ["edge10", "edge20", "edge21", "edge30", "edge31", "edge32"]


def test_every_table_string_round_trips_through_the_5_op_space():
    space = create_space("nb201", ops=5)
    table = load_table()
    strings = {space.to_string(a) for a in space.enumerate()}
    assert strings == set(table.strings)
    for s in table.strings[:500]:
        assert space.to_string(space.from_string(s)) == s


def test_arch_order_matches_edges():
    space = create_space("nb201")
    arch = space.from_string("|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|skip_connect~1|nor_conv_1x1~2|")
    assert arch == (0, 1, 2, 3, 0, 1)


@pytest.mark.parametrize("bad, fragment", [
    ("", "not an NB201 architecture string"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "not an NB201 architecture string"),
    ("|conv~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "'conv' is not a choice"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "should read"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "needs 2 inputs"),
    ("|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "'none' is not a choice"),
])
def test_bad_strings_give_clear_errors(bad, fragment):
    with pytest.raises(UserError, match=fragment):
        create_space("nb201").from_string(bad)


def test_known_cells():
    r = lookup(ALL_CONV3)
    assert r["cifar10"] == pytest.approx(93.76)
    assert r["cifar10_rank"] == 167
    best, acc = load_table().best()
    assert acc == pytest.approx(94.3733, abs=1e-3)
    assert lookup(best)["cifar10_rank"] == 1


def test_isomorphic_cells_resolve_to_their_own_rows():
    # Node 1 fed only by 'none': edges 1->2 and 1->3 carry zeros whatever their op is.
    a = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_3x3~2|"
    b = "|none~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|nor_conv_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    ra, rb = lookup(a), lookup(b)
    assert ra["architecture"] == a and rb["architecture"] == b
    assert ra["isomorphs"] == rb["isomorphs"] > 1
    assert abs(ra["cifar10"] - rb["cifar10"]) < 1.0  # same function, separately trained


def test_unknown_string_in_table():
    with pytest.raises(UserError, match="not in the NB201 table"):
        lookup("|x~0|")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# Stem conv + BN, the two reduction blocks (convs, BNs, shortcut conv1x1) and the 64 -> 10 classifier.
OUTER = (432 + 32) + (4608 + 64 + 9216 + 64 + 512) + (18432 + 128 + 36864 + 128 + 2048) + 650
LASTACT = 2 * 64  # NB201's final BN(64) weight and bias


def test_param_counts():
    space = create_space("nb201")
    net = space.build_supernet(channels=16, cells_per_stage=5)
    child = space.build_child(space.from_string(ALL_CONV3), channels=16, cells_per_stage=5)
    # A cell of skips has no weights: only stem, the two reduction blocks and the classifier remain.
    assert count(space.build_child((0,) * 6, channels=16, cells_per_stage=5)) == OUTER
    # AdvantageNAS ops: conv with bias, BN without affine, no lastact; 5 cells x 6 edges per stage at C = 16, 32, 64.
    conv3 = lambda c: 9 * c * c + c
    assert count(child) == OUTER + 30 * (conv3(16) + conv3(32) + conv3(64)) == 1_528_058
    conv1 = lambda c: c * c + c
    assert count(net) == OUTER + 30 * sum(conv3(c) + conv1(c) for c in (16, 32, 64))
    # NB201's network: no conv bias, affine BN in the ops, and lastact
    nb201_child = space.build_child(space.from_string(ALL_CONV3), channels=16, cells_per_stage=5, op_style="nb201")
    assert count(nb201_child) == OUTER + LASTACT + 30 * sum(9 * c * c + 2 * c for c in (16, 32, 64)) == 1_531_546
    # ABS's supernet: the 5 NB201 ops, op BNs without affine (conv3x3 9c^2 + conv1x1 c^2 per edge)
    abs_net = create_space("nb201", ops=5).build_supernet(channels=16, cells_per_stage=5, op_style="nb201",
                                                          op_bn_affine=False)
    assert count(abs_net) == OUTER + LASTACT + 30 * sum(10 * c * c for c in (16, 32, 64)) == 1_686_106


# NB201's published sizes (the benchmark API's "params", in M, at hp=12): the smallest and largest cells on
# CIFAR-10 and CIFAR-100 (0.073306 / 1.531546 and 0.079156 / 1.537396), and one 3-conv cell (0.802426,
# quoted in D-X-Y/NATS-Bench issue #36).
@pytest.mark.parametrize("cell, classes, params", [
    (ALL_CONV3, 10, 1_531_546),
    ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|", 10, 73_306),
    ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 10, 802_426),
    (ALL_CONV3, 100, 1_537_396),
    ("|none~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|", 100, 79_156),
])
def test_nb201_style_has_nb201s_published_parameter_counts(cell, classes, params):
    space = create_space("nb201", ops=5)
    child = space.build_child(space.from_string(cell), channels=16, cells_per_stage=5, num_classes=classes,
                              op_style="nb201")
    assert count(child) == params


def test_only_the_nb201_style_has_lastact():
    space = create_space("nb201")
    keys = lambda style: {k for k in space.build_supernet(channels=4, cells_per_stage=1, op_style=style).state_dict()}
    assert {k for k in keys("nb201") if k.startswith("lastact.")} == {
        "lastact.0.weight", "lastact.0.bias", "lastact.0.running_mean", "lastact.0.running_var",
        "lastact.0.num_batches_tracked"}
    assert not any(k.startswith("lastact") for k in keys("advantage"))


def cifar_like_batch(n=8):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, 32, 32, generator=g) - 0.48) / 0.25  # pixels in [0, 1], normalised as CIFAR-10 is
    return x, torch.randint(10, (n,), generator=g)


@pytest.mark.parametrize("op_bn_affine", [True, False])  # NB201's retraining / ABS's supernet
def test_all_skip_cell_starts_near_ln10_with_lastact(op_bn_affine):
    torch.manual_seed(0)
    space = create_space("nb201")
    child = space.build_child((0,) * 6, channels=16, cells_per_stage=5, op_style="nb201", op_bn_affine=op_bn_affine)
    x, y = cifar_like_batch()
    loss = torch.nn.functional.cross_entropy(child(x), y)
    assert torch.isfinite(loss) and loss.item() < 10


def test_without_lastact_the_all_skip_cell_starts_far_off():
    """Why lastact matters (and that the batch above exercises it): the AdvantageNAS network, which has none,
    starts the same cell at a loss of ~1e6-1e7 (the 15 residual sums compound)."""
    torch.manual_seed(0)
    child = create_space("nb201").build_child((0,) * 6, channels=16, cells_per_stage=5, op_style="advantage")
    x, y = cifar_like_batch()
    assert torch.nn.functional.cross_entropy(child(x), y).item() > 1e4


def test_nb201_reduction_shortcut_is_avgpool_2x2_then_conv1x1():
    torch.manual_seed(0)
    net = create_space("nb201").build_supernet(channels=4, cells_per_stage=1, op_style="nb201")
    block = net.layers[1]
    x = torch.randn(2, 4, 8, 8)
    expected = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), block.shortcut[1].weight)
    assert torch.allclose(block.shortcut(x), expected, atol=1e-6)
    # the AdvantageNAS code pools 3x3 with stride 2 and padding 1 (counting the padding)
    block = create_space("nb201").build_supernet(channels=4, cells_per_stage=1).layers[1]
    expected = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 3, 2, 1), block.shortcut[1].weight)
    assert torch.allclose(block.shortcut(x), expected, atol=1e-6)


def test_per_cell_active_with_the_same_arch_everywhere_is_the_shared_call():
    torch.manual_seed(0)
    space = create_space("nb201", ops=5)
    for style in ("advantage", "nb201"):
        net = space.build_supernet(channels=4, cells_per_stage=2, op_style=style)
        x = torch.randn(3, 3, 32, 32)
        shared = [[k] for k in (3, 1, 4, 2, 0, 3)]
        assert torch.equal(net(x, None, [shared] * 6), net(x, None, shared))


def test_per_cell_active_changes_only_through_its_own_cell():
    """Changing the arch of the last cell only changes the output; cells before it see the same input."""
    torch.manual_seed(0)
    space = create_space("nb201")
    net = space.build_supernet(channels=4, cells_per_stage=1, op_style="nb201")
    x = torch.randn(3, 3, 32, 32)
    a, b = [[k] for k in (2, 2, 2, 2, 2, 2)], [[k] for k in (0, 1, 3, 0, 1, 3)]
    mixed = net(x, None, [a, a, b])
    assert not torch.allclose(mixed, net(x, None, a))
    # the same network computed by hand: shared arch a up to the last cell, then b
    net.eval()
    h = net.stem(x)
    for layer, arch in zip(net.layers, [a, None, a, None, b]):
        h = layer(h) if arch is None else layer(h, None, arch)
    by_hand = net.classifier(net.lastact(h).mean((2, 3)))
    assert torch.allclose(net(x, None, [a, a, b]), by_hand, atol=1e-6)


def test_per_cell_active_of_the_wrong_length_is_refused():
    net = create_space("nb201").build_supernet(channels=4, cells_per_stage=1)
    shared = [[0]] * 6
    with pytest.raises(UserError, match="one entry per cell \\(3\\), got 2"):
        net(torch.randn(1, 3, 32, 32), None, [shared, shared])


@pytest.mark.parametrize("style, affine", [("advantage", None), ("nb201", None), ("nb201", False)])
def test_one_hot_supernet_equals_child_with_shared_weights(style, affine):
    torch.manual_seed(0)
    space = create_space("nb201", ops=5)
    net = space.build_supernet(channels=8, cells_per_stage=2, op_style=style, op_bn_affine=affine)
    x = torch.randn(6, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        arch = space.sample(g)
        gates = torch.zeros(6, 5)
        gates[range(6), list(arch)] = 1.0
        child = child_from_supernet(space, net, arch)
        out_super = net(x, gates, [[k] for k in arch])
        out_child = child(x)
        assert torch.allclose(out_super, out_child, atol=1e-5)
        # and the unscaled sparse path used by weight steps
        assert torch.allclose(net(x, None, [[k] for k in arch]), out_child, atol=1e-5)


def one_hot_supernet_with_edge_outputs(cells_per_stage: int):
    """A small supernet, a fixed one-hot gate leaf, and every edge's output (per edge, over the cells) kept with
    its gradient by forward hooks."""
    torch.manual_seed(0)
    net = create_space("nb201").build_supernet(channels=4, cells_per_stage=cells_per_stage)
    arch = (2, 1, 3, 0, 2, 1)
    gates = torch.zeros(6, 4)
    gates[range(6), list(arch)] = 1.0
    gates.requires_grad_()
    outputs = {i: [] for i in range(6)}
    for cell in (m for m in net.modules() if m.__class__.__name__ == "Cell"):
        for i, edge in enumerate(cell.edges):
            def hook(module, inp, out, i=i):  # returns None: the output stays as it is
                out.retain_grad()
                outputs[i].append(out)
            edge.register_forward_hook(hook)
    return net, arch, gates, outputs


def test_gate_gradient_is_inner_product_of_output_grad_and_op_output():
    net, arch, gates, outputs = one_hot_supernet_with_edge_outputs(cells_per_stage=2)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(10, (5,))
    loss = torch.nn.functional.cross_entropy(net(x, gates, [[k] for k in arch]), y)
    loss.backward()
    for i, k in enumerate(arch):
        # e = 1 * op(x), so <dL/de, op(x)> = <e.grad, e>, summed over the 6 cells sharing the gate
        expected = sum((e.grad * e).sum() for e in outputs[i])
        assert gates.grad[i, k].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
        assert (gates.grad[i] != 0).sum() == 1


def test_dense_gates_mix_all_ops():
    torch.manual_seed(0)
    space = create_space("nb201")
    net = space.build_supernet(channels=4, cells_per_stage=1)
    x = torch.randn(3, 3, 32, 32)
    soft = torch.softmax(torch.randn(6, 4), -1)
    out = net(x, soft, None)
    assert out.shape == (3, 10)
    # a dense call with one-hot gates equals the sparse call
    arch = (1, 2, 0, 3, 2, 2)
    hard = torch.zeros(6, 4)
    hard[range(6), list(arch)] = 1
    assert torch.allclose(net(x, hard, None), net(x, hard, [[k] for k in arch]), atol=1e-5)


def test_restrict_enumerates_product_of_kept_ops():
    space = create_space("nb201")
    small = space.restrict({"edge10": ["nor_conv_3x3"], "edge21": ["skip_connect", "avg_pool_3x3"]})
    assert small.size == 1 * 4 * 2 * 4 * 4 * 4 == len(list(small.enumerate()))
    s = ALL_CONV3.replace("nor_conv_3x3~1|+", "avg_pool_3x3~1|+")
    assert small.to_string(small.from_string(s)) == s
    with pytest.raises(UserError, match="no choice"):
        space.restrict({"edge10": []})


def test_unit_gates_give_the_same_values_and_gradients_as_multiplied_gates():
    torch.manual_seed(0)
    space = create_space("nb201")
    net = space.build_supernet(channels=4, cells_per_stage=2)
    arch = (3, 1, 2, 0, 2, 1)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(10, (5,))
    results = []
    for unit in (False, True):
        gates = torch.zeros(6, 4)
        gates[range(6), list(arch)] = 1.0
        gates.requires_grad_()
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x, gates, [[k] for k in arch], unit), y)
        loss.backward()
        results.append((loss.detach(), gates.grad.clone(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    (l0, g0, w0), (l1, g1, w1) = results
    assert torch.equal(l0, l1)
    assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-6) and (g1 != 0).sum() == 6
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(w0, w1))


def test_inactive_gates_get_the_sum_of_the_edge_output_gradient():
    """GDAS semantics: each op that did not run adds gate_j * 1, so dL/dgate_j = sum(dL/de)."""
    net, arch, gates, outputs = one_hot_supernet_with_edge_outputs(cells_per_stage=1)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(10, (5,))
    loss = torch.nn.functional.cross_entropy(net(x, gates, [[k] for k in arch], True, True), y)
    loss.backward()
    for i, k in enumerate(arch):
        total = sum(e.grad.sum() for e in outputs[i])
        for j in range(4):
            expected = sum((e.grad * e).sum() for e in outputs[i]) if j == k else total
            assert gates.grad[i, j].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
