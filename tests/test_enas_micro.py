import numpy as np
import pytest
import torch

from oneshot.errors import UserError
from oneshot.spaces.enas_micro import OPS, EnasMicroSpace, child_from_supernet, reduction_cells
from oneshot.strategies.asng import Layout

SPACE = EnasMicroSpace()
# normal: every node reads node 0 (=state 2) or the cell inputs, so nodes 1..4 are unused (4 of 5);
# reduce: a chain n0 <- n1 <- n2 <- n3 <- n4, so only n4 is unused.
HAND = ("normal: n0=(0 sep_conv_3x3, 1 identity) n1=(2 sep_conv_5x5, 2 max_pool_3x3) n2=(0 avg_pool_3x3, 2 identity) "
        "n3=(1 identity, 2 sep_conv_3x3) n4=(2 max_pool_3x3, 0 sep_conv_5x5); "
        "reduce: n0=(0 sep_conv_3x3, 1 max_pool_3x3) n1=(2 identity, 0 avg_pool_3x3) n2=(3 sep_conv_5x5, 1 identity) "
        "n3=(4 avg_pool_3x3, 0 sep_conv_3x3) n4=(5 identity, 1 sep_conv_5x5)")


def numel(module):
    return sum(p.numel() for p in module.parameters())


def test_decisions_and_free_parameters():
    assert len(SPACE.decisions) == 40
    assert sum(d.size for d in SPACE.decisions) == 180                 # dim θ
    assert sum(d.size - 1 for d in SPACE.decisions) == 140             # N
    assert SPACE.decisions[0].name == "normal.n0.in1" and SPACE.decisions[0].choices == ("0", "1")
    assert SPACE.decisions[23].name == "reduce.n0.op2" and SPACE.decisions[23].choices == OPS
    lay = Layout.of(sizes=[d.size for d in SPACE.decisions])
    assert lay.valid_d == 40 and lay.n == 140
    assert lay.theta_min[0] == pytest.approx(1 / 40)                   # node-0 input (C = 2)
    assert lay.theta_min[2] == pytest.approx(1 / 160)                  # op (C = 5)
    assert lay.theta_min[16] == pytest.approx(1 / 200)                 # node-4 input (C = 6)
    assert reduction_cells(8) == (2, 5) and reduction_cells(20) == (6, 13)


def test_string_round_trip():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        arch = SPACE.sample(gen)
        assert SPACE.from_string(SPACE.to_string(arch)) == arch
    arch = SPACE.from_string(HAND)
    assert SPACE.to_string(arch) == HAND
    g = SPACE.genotype(arch)
    assert g["normal"][0] == (0, 1, OPS.index("sep_conv_3x3"), 0)
    assert g["reduce"][4] == (5, 1, 0, OPS.index("sep_conv_5x5"))


@pytest.mark.parametrize("bad, words", [
    (HAND.replace("n1=(2 sep_conv_5x5", "n1=(2 conv_7x7"), "unknown operation 'conv_7x7'"),
    (HAND.replace("n0=(0 sep_conv_3x3, 1 identity)", "n0=(2 sep_conv_3x3, 1 identity)"), "out of range; use 0..1"),
    (HAND.replace(" n4=(2 max_pool_3x3, 0 sep_conv_5x5)", ""), "exactly 5 nodes"),
    (HAND.split(";")[0], "lacks the reduce cell"),
    (HAND.replace("reduce:", "normal:"), "unknown or repeated"),
    (HAND.replace("n1=(2 sep", "n2=(2 sep"), "in order"),
])
def test_bad_strings(bad, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        SPACE.from_string(bad)


def test_supernet_forward_shapes_and_sparse_contract():
    torch.manual_seed(0)
    net = SPACE.build_supernet(channels=4, cells=5, cells_per_stage=5, op_style="advantage")  # extras are ignored
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [1, 3]
    x = torch.randn(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        arch = SPACE.sample(gen)
        out = net(x, active=[[v] for v in arch])
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(UserError, match="one architecture at a time"):
        net(x)
    # one-hot gates: same output, gradients on the chosen entries only
    gates = torch.zeros(40, 6)
    gates[torch.arange(40), torch.tensor(arch)] = 1.0
    gates.requires_grad_()
    gated = net(x, gates, [[v] for v in arch], unit_gates=True)
    assert torch.allclose(gated, out, atol=1e-6)
    (grad,) = torch.autograd.grad(gated.square().sum(), gates)
    off = torch.ones_like(gates, dtype=torch.bool)
    off[torch.arange(40), torch.tensor(arch)] = False
    assert grad[off].abs().max() == 0 and grad[~off].abs().sum() > 0


def test_output_concat_uses_exactly_the_unused_nodes():
    arch = SPACE.from_string(HAND)
    net = SPACE.build_supernet(channels=4, cells=5)
    widths = []
    for cell in net.cells:
        assert cell.out_weight.shape == (cell.c, 5 * cell.c, 1, 1)    # the 5C-wide shared weight
        original = cell.output
        cell.output = lambda h, unused, original=original, cell=cell: (widths.append((cell.c, h.shape[1], unused)),
                                                                        original(h, unused))[1]
    net(torch.randn(1, 3, 8, 8), active=[[v] for v in arch])
    # cells: normal (C=4), reduce (C=8), normal (C=8), reduce (C=16), normal (C=16)
    normal, reduce = [1, 2, 3, 4], [4]
    assert widths == [(4, 16, normal), (8, 8, reduce), (8, 32, normal), (16, 16, reduce), (16, 64, normal)]
    child = SPACE.build_child(arch, 4, cells=5, auxiliary=False)
    assert [c.out_weight.shape[1] for c in child.cells] == [16, 8, 32, 16, 64]


def test_child_forward_with_aux_head():
    torch.manual_seed(0)
    arch = SPACE.from_string(HAND)
    child = SPACE.build_child(arch, 4, cells=5, drop_path=0.2)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = child(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    child.eval()
    logits, aux = child(x)
    assert logits.shape == (2, 10) and aux is None
    logits, aux = SPACE.build_child(arch, 4, cells=5, auxiliary=False)(x)
    assert aux is None


def test_parameter_counts_by_hand():
    arch = SPACE.from_string(HAND)
    c = 4
    child = SPACE.build_child(arch, c, cells=3, auxiliary=False)
    cell = child.cells[0]                                             # normal, C = 4, inputs from the 3C stem
    sep3 = 2 * (c * 9 + c * c) + 2 * 2 * c                            # (dw + pw) x 2 + two affine BNs
    sep5 = 2 * (c * 25 + c * c) + 2 * 2 * c
    assert numel(cell.slots[0]["0_3"]) == sep3 == 120
    assert numel(cell.slots[2]["2_4"]) == sep5 == 248
    # normal cell branches: sep3, identity, sep5, maxpool, avgpool, identity, identity, sep3, maxpool, sep5
    pre = 2 * (3 * c * c + 2 * c)                                     # two ReLU-conv1x1-BN from 3C channels
    out = c * 4 * c + 2 * c                                           # 1x1 from 4 unused nodes + BN
    assert numel(cell) == pre + 2 * sep3 + 2 * sep5 + out
    # the reduce cell's stride-2 identity on a cell input is a FactorizedReduce: 2 convs C -> C/2, BN(C)
    r = child.cells[1]
    assert r.c == 2 * c
    assert numel(r.slots[5]["1_0"]) == 2 * (r.c * r.c // 2) + 2 * r.c
    assert type(r.slots[2]["2_0"]).__name__ == "Identity"             # node input: stride 1


def test_channels_for_budget_is_the_largest_that_fits():
    arch = SPACE.from_string(HAND)

    def params(ch, cells):
        with torch.device("meta"):
            return numel(SPACE.build_child(arch, ch, cells=cells, auxiliary=False))

    budget = 2.0e5
    ch = SPACE.channels_for_budget(arch, max_params=budget, cells=5)
    assert params(ch, 5) <= budget < params(ch + 1, 5)
    ch = SPACE.channels_for_budget(arch)                               # the real setting: 20 cells, 4.0M
    assert params(ch, 20) <= 4.0e6 < params(ch + 1, 20)
    with pytest.raises(UserError, match="raise the budget"):
        SPACE.channels_for_budget(arch, max_params=10)


def test_child_from_supernet_computes_the_same_function():
    torch.manual_seed(0)
    arch = SPACE.from_string(HAND)
    net = SPACE.build_supernet(channels=4, cells=3)
    x = torch.randn(2, 3, 8, 8)
    child = child_from_supernet(SPACE, net, arch)
    assert numel(child) < numel(net)
    for mode in (True, False):                                        # batch statistics, then running ones
        net.train(mode), child.train(mode)
        expect = net(x, active=[[v] for v in arch])
        got, aux = child(x)
        assert aux is None
        np.testing.assert_allclose(got.detach().numpy(), expect.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_drop_path_spares_identity_and_keeps_the_mean():
    from oneshot.spaces.enas_micro import drop_path

    torch.manual_seed(0)
    x = torch.ones(20000, 1, 1, 1)
    kept = drop_path(x, 0.3)
    assert kept.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert kept.mean().item() == pytest.approx(1.0, abs=0.03)          # 3 σ of the Bernoulli mean
    # a child whose every op is identity never drops (its output in train mode is unchanged by drop_path)
    ident = SPACE.from_string(HAND.replace("sep_conv_3x3", "identity").replace("sep_conv_5x5", "identity")
                              .replace("avg_pool_3x3", "identity").replace("max_pool_3x3", "identity"))
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    a = SPACE.build_child(ident, 4, cells=3, auxiliary=False, drop_path=0.0)
    b = SPACE.build_child(ident, 4, cells=3, auxiliary=False, drop_path=0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x)[0], b(x)[0])
    c = SPACE.build_child(SPACE.from_string(HAND), 4, cells=3, auxiliary=False, drop_path=0.5)
    d = SPACE.build_child(SPACE.from_string(HAND), 4, cells=3, auxiliary=False, drop_path=0.0)
    d.load_state_dict(c.state_dict())
    assert not torch.allclose(c(x)[0], d(x)[0])                          # sep convs / pools do get dropped
