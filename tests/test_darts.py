import re

import pytest
import torch
from torch import nn

from oneshot.errors import UserError
from oneshot.spaces.darts import (EDGES, GENOTYPES, OPS, DARTSSpace, Genotype, child_from_supernet, count_flops,
                                  derive_edge_all, derive_top2, op_cost, parse_genotype)

SPACE = DARTSSpace()
EDGE_SOURCES = [source for _, source in EDGES] * 2

# SNAS's own top-2 listings of its released cells (SNAS/genotypes.py, without _edge_all): same architectures
SNAS_MILD_TOP2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
                  "('dil_conv_3x3', 1), "
                  "('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_3x3', 1)], "
                  "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), "
                  "('skip_connect', 2), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), "
                  "('dil_conv_5x5', 2)], reduce_concat=range(2, 6))")
SNAS_AGGRESSIVE_TOP2 = ("Genotype(normal=[('sep_conv_5x5', 0), ('skip_connect', 1), ('skip_connect', 0), "
                        "('skip_connect', 1), ('dil_conv_5x5', 1), ('skip_connect', 0), ('skip_connect', 0), "
                        "('dil_conv_5x5', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 0), ('none', 1), "
                        "('sep_conv_5x5', 0), ('none', 1), ('none', 1), ('none', 0), ('none', 1), ('none', 0)], "
                        "reduce_concat=range(2, 6))")


def params(arch, pool_bn=True, channels=36, cells=20):
    with torch.device("meta"):
        net = SPACE.build_child(arch, channels, cells, auxiliary=False, pool_bn=pool_bn)
    return sum(p.numel() for p in net.parameters())


# --- space and genotypes -------------------------------------------------------------------------------------
def test_decisions_in_darts_order():
    assert len(SPACE) == 28 and SPACE.max_choices == 8
    names = [d.name for d in SPACE.decisions]
    assert names[:5] == ["normal_2_0", "normal_2_1", "normal_3_0", "normal_3_1", "normal_3_2"]
    assert names[13] == "normal_5_4" and names[14] == "reduce_2_0" and names[27] == "reduce_5_4"
    assert SPACE.decisions[0].choices == OPS and OPS[0] == "none" and OPS[3] == "skip_connect"


@pytest.mark.parametrize("name, spec, exact", [("snas_mild", 2.66e6, 2_663_542), ("snas_moderate", 2.85e6, 2_848_222),
                                               ("snas_aggressive", 2.31e6, 2_313_622), ("darts_v2", 3.35e6, 3_351_502)])
def test_released_parameter_counts_match_the_spec(name, spec, exact):
    n = params(SPACE.from_string(name))           # C = 36, 20 cells, no auxiliary head, pools with BN (SNAS)
    assert abs(n - spec) / spec < 0.01
    assert n == exact


def test_darts_v2_without_pool_bn_has_the_official_darts_count():
    assert params(SPACE.from_string("darts_v2"), pool_bn=False) == 3_349_342   # DARTS train.py: 3.349342 MB


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_released_genotype_text_round_trips(name):
    g = GENOTYPES[name]
    assert parse_genotype(str(g)) == g
    arch = SPACE.from_string(name)
    assert SPACE.from_string(str(g)) == arch
    assert SPACE.from_string(SPACE.to_string(arch)) == arch


def test_random_architectures_round_trip():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        arch = SPACE.sample(g)
        assert SPACE.from_string(SPACE.to_string(arch)) == arch
    sparse = tuple(0 if i % 3 else 4 for i in range(28))   # many input-less nodes
    assert SPACE.from_string(SPACE.to_string(sparse)) == sparse


def test_top2_and_edge_all_listings_give_the_same_architecture():
    assert SPACE.from_string(SNAS_MILD_TOP2) == SPACE.from_string("snas_mild")
    assert SPACE.from_string(SNAS_AGGRESSIVE_TOP2) == SPACE.from_string("SNAS_aggressive_edge_all")
    # a two-input-per-node cell prints in the 8-entry DARTS form, sources ascending
    text = SPACE.to_string(SPACE.from_string("darts_v2"))
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),")
    assert text.count("(") - 1 == 16
    # the aggressive reduction cell has input-less nodes: printed edge-all, 14 entries, 'none' included
    reduce = SPACE.genotype(SPACE.from_string("snas_aggressive")).reduce
    assert len(reduce) == 14 and [op for op, _ in reduce].count("none") == 12


def test_released_cells_as_the_spec_lists_them():
    arch = SPACE.from_string("snas_moderate")
    names = SPACE.op_names(arch)
    normal = {d.name: op for d, op in zip(SPACE.decisions[:14], names[:14]) if op != "none"}
    assert normal == {"normal_2_0": "dil_conv_5x5", "normal_2_1": "skip_connect", "normal_3_0": "sep_conv_3x3",
                      "normal_3_1": "skip_connect", "normal_4_0": "skip_connect", "normal_4_1": "skip_connect",
                      "normal_5_0": "sep_conv_3x3", "normal_5_1": "dil_conv_5x5"}
    aggressive = SPACE.op_names(SPACE.from_string("snas_aggressive"))[14:]
    assert [op for op in aggressive if op != "none"] == ["sep_conv_5x5", "sep_conv_5x5"]


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[('sep_conv_3x3', 0)", "is not genotype text"),
    ("[('sep_conv_3x3', 0)]", "is not a Genotype"),
    ("Genotype(normal=[('conv_9x9', 0)] * 8, normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2, 3, 4, 5])",
     "must be a literal list"),
    (str(GENOTYPES["darts_v2"]).replace("'dil_conv_3x3'", "'conv_7x7'"), "unknown operation 'conv_7x7'"),
    (str(GENOTYPES["darts_v2"]).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "feeds node 5"),
    (str(GENOTYPES["darts_v2"]).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', -1)"), "feeds node 5"),
    (str(GENOTYPES["darts_v2"]).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 0)"), "lists source 0 twice"),
    (str(GENOTYPES["darts_v2"]).replace(", ('dil_conv_3x3', 2)", ""), "lists 7 entries"),
    (str(GENOTYPES["darts_v2"]).replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), "must be [2, 3, 4, 5]"),
    (str(GENOTYPES["darts_v2"]).replace(", reduce_concat=[2, 3, 4, 5]", ""), "lacks reduce_concat"),
    (str(GENOTYPES["darts_v2"]).replace("reduce_concat", "reduce_cat"), "'reduce_cat' is unknown"),
    (str(GENOTYPES["darts_v2"]).replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 2, 0.3)"), "is not an (op, source)"),
    ("Genotype(normal=__import__('os').system('true'), normal_concat=[2], reduce=[], reduce_concat=[2])",
     "must be a literal list"),
    ("snas_nonexistent", "is not a Genotype"),
])
def test_malformed_genotypes_are_refused_in_one_line(text, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        SPACE.from_string(text)
    assert "\n" not in str(info.value)


def test_restrict_keeps_choices_per_edge():
    keep = {d.name: ["none", "skip_connect", "sep_conv_3x3"] for d in SPACE.decisions[:14]}
    keep["reduce_2_0"] = ["max_pool_3x3", "sep_conv_5x5"]
    small = SPACE.restrict(keep)
    assert isinstance(small, DARTSSpace) and small.max_choices == 8
    assert small.decisions[0].choices == ("none", "skip_connect", "sep_conv_3x3")
    assert small.decisions[14].choices == ("max_pool_3x3", "sep_conv_5x5")
    arch = small.from_string(SNAS_MILD_TOP2.replace("('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1)",
                                                     "('sep_conv_5x5', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1)")
                             .replace("dil_conv_3x3", "sep_conv_3x3"))
    assert small.from_string(small.to_string(arch)) == arch
    assert small.op_names(arch)[14] == "sep_conv_5x5"
    with pytest.raises(UserError, match="'dil_conv_3x3' is not a choice of normal_3_1"):
        small.from_string(SNAS_MILD_TOP2)
    net = small.build_supernet(input_shape=(3, 8, 8), channels=2, cells=3)
    assert len(net.cells[0].edges[0].ops) == 3 and len(net.cells[1].edges[0].ops) == 2


# --- derivation ----------------------------------------------------------------------------------------------
def test_edge_all_and_top2_derivation_hand_case():
    logits = torch.full((28, 8), -5.0)
    logits[:, 0] = 0.0                                   # 'none' wins every edge by default
    logits[0, 4] = 1.0                                   # normal 2<-0: sep3 beats none
    logits[1, 0], logits[1, 6] = 3.0, 2.0                # normal 2<-1: none strongest, dil3 its best real op
    # node 3 (rows 2, 3, 4): strongest non-none weights 0.5 (row 3) > 0.3 (row 4) > 0.05 (row 2), but row 2's
    # 'none' has 0.9: DARTS ranks without 'none' (SNAS's own genotype() would keep row 2)
    for row, (k, p) in {2: (5, 0.05), 3: (1, 0.5), 4: (3, 0.3)}.items():
        logits[row] = torch.log(torch.full((8,), (1 - p) / 7))
        logits[row, k] = torch.log(torch.tensor(p))
    logits[2] = torch.log(torch.tensor([0.9, 0.01, 0.01, 0.01, 0.01, 0.05, 0.005, 0.005]))
    edge_all = derive_edge_all(logits)
    assert edge_all[:5] == (4, 0, 0, 1, 3)                # node 3: none, max_pool, skip
    top2 = derive_top2(logits, [d.choices for d in SPACE.decisions])
    assert top2[:5] == (4, 6, 0, 1, 3)                    # node 2 keeps both edges; node 3 rows 3 and 4
    assert sum(k != 0 for k in top2) == 16               # two inputs for each of the 8 nodes


def test_top2_recovers_a_darts_cell_from_peaked_logits():
    arch = SPACE.from_string("darts_v2")
    logits = torch.zeros(28, 8)
    logits[torch.arange(28), torch.tensor(arch)] = 4.0
    logits[:, 0] = 1.0                                    # 'none' competes, but top-2 ignores it
    assert SPACE.derive_top2(logits) == arch


def test_darts_strategy_derives_darts_top2_cell_on_this_space_and_argmax_on_nb201():
    from oneshot import strategies
    from oneshot.spaces import create_space

    arch = SPACE.from_string("darts_v2")
    strategy = strategies.create("darts", SPACE, seed=0)
    with torch.no_grad():
        strategy.theta.zero_()
        strategy.theta[torch.arange(28), torch.tensor(arch)] = 2.0
        strategy.theta[:, 0] = 3.0                        # 'none' is every edge's argmax
    assert strategy.derive() == arch                      # DARTS's genotype rule, not the per-edge argmax
    argmax = strategies.create("darts", SPACE, seed=0, derive="argmax")
    with torch.no_grad():
        argmax.theta.copy_(strategy.theta)
    assert argmax.derive() == (0,) * 28
    nb201 = create_space("nb201")
    other = strategies.create("darts", nb201, seed=0)
    with torch.no_grad():
        other.theta.copy_(torch.randn(other.theta.shape, generator=torch.Generator().manual_seed(0)))
    assert other.derive() == tuple(other.theta.argmax(-1).tolist())
    with pytest.raises(UserError, match="derive=argmax"):
        strategies.create("darts", nb201, seed=0, derive="top2")
    with pytest.raises(UserError, match="auto, top2 or argmax"):
        strategies.create("darts", SPACE, seed=0, derive="best")


def test_channels_last_supernet_and_child_compute_the_same_step():
    """The darts presets lay networks out NHWC (faster on CPU): same logits and gradients as NCHW."""
    from oneshot.supernet import use_channels_last

    net, x = tiny_supernet(size=16)
    gates = torch.softmax(torch.randn(28, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), -1)
    arch = SPACE.from_string("snas_moderate")
    for model, forward in ((net, lambda m: m(x, gates=gates)),
                           (child_from_supernet(SPACE, net, arch).double(), lambda m: m(x)[0])):
        torch.manual_seed(0)
        reference = forward(model)
        reference.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        use_channels_last(model)
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in model.parameters())
        torch.manual_seed(0)                              # the same drop-path masks
        out = forward(model)
        out.square().sum().backward()
        assert torch.allclose(out, reference, atol=1e-10)
        assert all(torch.allclose(p.grad, g, atol=1e-9) for p, g in zip(model.parameters(), grads))


def test_darts_presets_use_channels_last():
    from oneshot.config import preset
    from oneshot.retrain import retrain_preset

    assert preset("cpu", space="darts").channels_last and preset("paper", space="darts").channels_last
    assert not preset("cpu", space="nb201").channels_last            # NB201 runs stay bit-identical
    assert retrain_preset("cpu", "darts").channels_last and not retrain_preset("cpu", "nb201").channels_last


# --- networks ------------------------------------------------------------------------------------------------
def tiny_supernet(seed=0, cells=4, size=8):
    torch.manual_seed(seed)
    net = SPACE.build_supernet(input_shape=(3, size, size), num_outputs=5, channels=4, cells=cells).double()
    return net, torch.randn(3, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("name", ["darts_v2", "snas_aggressive", "random"])
def test_one_hot_supernet_equals_the_child_with_its_weights(name):
    net, x = tiny_supernet()
    arch = SPACE.sample(torch.Generator().manual_seed(1)) if name == "random" else SPACE.from_string(name)
    gates = torch.zeros(28, 8, dtype=torch.float64)
    gates[torch.arange(28), torch.tensor(arch)] = 1.0
    child = child_from_supernet(SPACE, net, arch).double()
    for train in (True, False):                           # batch statistics, then running statistics
        net.train(train)
        child.train(train)
        expected = net(x, gates=gates, active=[[k] for k in arch], unit_gates=True)
        logits, aux = child(x)
        assert aux is None
        assert torch.allclose(logits, expected, atol=1e-10)
    assert not torch.allclose(child(x)[0], net(x, gates=torch.full((28, 8), 1 / 8, dtype=torch.float64)))


def test_one_hot_gates_run_one_op_per_edge():
    net, x = tiny_supernet()
    calls = {}
    for name, module in net.named_modules():
        if re.fullmatch(r"cells\.\d+\.edges\.\d+\.ops\.\d+", name):
            module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    arch = SPACE.sample(torch.Generator().manual_seed(2))
    gates = torch.zeros(28, 8, dtype=torch.float64)
    gates[torch.arange(28), torch.tensor(arch)] = 1.0
    net(x, gates=gates, active=[[k] for k in arch], unit_gates=True)
    assert len(calls) == 4 * 14 and set(calls.values()) == {1}
    for name in calls:
        cell, edge, op = map(int, re.findall(r"\d+", name))
        row = edge + 14 * net.cells[cell].reduction
        assert op == arch[row]
    # dense: every op of every edge runs, except 'none' (zeros: skipped) — seen by a hook on any module inside the
    # op, since ops that begin with a ReLU share the edge's one ReLU and run their remaining modules directly
    touched = set()
    for name, module in net.named_modules():
        m = re.fullmatch(r"cells\.(\d+)\.edges\.(\d+)\.ops\.(\d+)(\..+)?", name)
        if m:
            key = tuple(int(g) for g in m.groups()[:3])
            module.register_forward_hook(lambda mod, i, o, key=key: touched.add(key))
    net(x, gates=torch.full((28, 8), 1 / 8, dtype=torch.float64))
    assert touched == {(c, e, k) for c in range(4) for e in range(14) for k in range(1, 8)}


def test_gate_rows_are_shared_by_cells_of_a_type():
    net, x = tiny_supernet(cells=4)                       # cells 0, 3 normal; 1, 2 reduce
    gates = torch.full((28, 8), 1 / 8, dtype=torch.float64, requires_grad=True)
    net(x, gates=gates).sum().backward()
    assert gates.grad[:14].abs().sum() > 0 and gates.grad[14:].abs().sum() > 0
    # d/dgate of a row equals the sum of what each cell of that type contributes
    separate = [gates.detach().clone().requires_grad_() for _ in net.cells]
    s0 = s1 = net.stem(x)
    for cell, g in zip(net.cells, separate):
        rows = slice(14, 28) if cell.reduction else slice(0, 14)
        s0, s1 = s1, cell(s0, s1, g[rows])
    net.classifier(s1.mean((2, 3))).sum().backward()
    assert torch.allclose(gates.grad, sum(g.grad for g in separate), atol=1e-10)


def test_child_shapes_aux_head_and_drop_path():
    arch = SPACE.from_string("snas_mild")
    torch.manual_seed(0)
    child = SPACE.build_child(arch, channels=4, cells=5, input_shape=(3, 32, 32), num_outputs=7, drop_path=0.5)
    x = torch.randn(4, 3, 32, 32)
    logits, aux = child(x)
    assert logits.shape == (4, 7) and aux.shape == (4, 7)
    child.eval()
    assert child(x)[1] is None
    # odd and small inputs, any channel count
    small = SPACE.build_child(arch, channels=2, cells=3, input_shape=(1, 7, 7), num_outputs=3)
    assert [t.shape for t in small(torch.randn(2, 1, 7, 7))] == [(2, 3), (2, 3)]
    # identity edges are exempt from drop-path, others are not
    cell = child.cells[0]
    assert [cell.identity[e] for e in (0, 2, 5)] == [False, True, True]


def test_drop_path_on_every_supernet_edge_in_training_only():
    net, x = tiny_supernet()
    gates = torch.full((28, 8), 1 / 8, dtype=torch.float64)
    net.eval()
    before = net(x, gates=gates)
    net.drop_path = 0.3
    assert torch.equal(net(x, gates=gates), before)
    net.train()
    torch.manual_seed(0)
    a = net(x, gates=gates)
    torch.manual_seed(1)
    assert not torch.allclose(a, net(x, gates=gates))
    assert DARTSSpace(drop_path=0.3).restrict({}).build_supernet(channels=2, cells=1).drop_path == 0.3


def test_drop_path_spares_identity_in_the_child_only():
    """Search (spec pitfall 4): every edge output is dropped, skip included; a child exempts identity edges."""
    arch = tuple(3 if e < 14 and EDGE_SOURCES[e] < 2 else 0 for e in range(28))  # normal: x0, x1 skipped
    arch = arch[:14] + SPACE.from_string("darts_v2")[14:]
    gates = torch.zeros(28, 8, dtype=torch.float64)
    gates[torch.arange(28), torch.tensor(arch)] = 1.0
    net, x = tiny_supernet()
    child = child_from_supernet(SPACE, net, arch).double()
    for model, run in ((net, lambda: net(x, gates=gates, active=[[k] for k in arch], unit_gates=True)),
                       (child, lambda: child(x))):
        seen = []
        model.cells[0].register_forward_hook(lambda m, i, o: seen.append(o))    # cell 0 is a normal cell
        model.train()
        model.drop_path = 0.0
        run()
        model.drop_path = 0.9
        torch.manual_seed(0)
        run()
        assert torch.equal(seen[0], seen[1]) == (model is child)


def test_unknown_op_and_bad_network_options():
    with pytest.raises(UserError, match="unknown operation 'conv_3x3'"):
        DARTSSpace([("none", "conv_3x3")] * 28)
    with pytest.raises(UserError, match="square"):
        SPACE.build_supernet(input_shape=(3, 8, 6))


# --- costs ---------------------------------------------------------------------------------------------------
def test_op_costs_equal_hand_computations():
    size, flops, mac = (SPACE.op_costs(r, channels=16, cells=8, input_size=32) for r in ("size", "flops", "mac"))
    assert size.shape == (8, 28, 8)
    sep3, skip, maxp, dil5 = (OPS.index(op) for op in ("sep_conv_3x3", "skip_connect", "max_pool_3x3", "dil_conv_5x5"))
    # cell 0: normal, C = 16, H = 32, edge normal_2_0 (row 0)
    assert size[0, 0, sep3] == 2 * (16 * 9 + 16 * 16) == 800
    assert flops[0, 0, sep3] == 800 * 32 * 32
    assert mac[0, 0, sep3] == 32 * 32 * (7 * 16 + 16) + 800
    assert (size[0, 0, skip], flops[0, 0, skip], mac[0, 0, skip]) == (0, 0, 2 * 16 * 32 * 32)
    assert (flops[0, 0, maxp], mac[0, 0, maxp]) == (9 * 16 * 32 * 32, 2 * 16 * 32 * 32)
    assert size[0, :, 0].abs().sum() == 0 and size[0, 14:].abs().sum() == 0      # 'none'; no reduce rows
    # cell 2: the first reduction, C = 32, input 32x32, output 16x16; reduce_2_0 (row 14) has stride 2
    assert (size[2, 14, skip], flops[2, 14, skip]) == (32 * 32, 32 * 32 * 16 * 16)       # FactorizedReduce
    assert mac[2, 14, skip] == 2 * 16 * 16 * (4 * 32 + 16) + 32 * 32
    assert (flops[2, 14, maxp], mac[2, 14, maxp]) == (9 * 32 * 16 * 16, 5 * 32 * 16 * 16)
    assert mac[2, 14, sep3] == 16 * 16 * (10 * 32 + 32) + 2 * (32 * 9 + 32 * 32)
    # reduce_3_2 (row 18): stride 1 at 16x16
    assert size[2, 18, dil5] == 32 * 25 + 32 * 32
    assert mac[2, 18, dil5] == 16 * 16 * (3 * 32 + 32) + 32 * 25 + 32 * 32
    assert size[2, :14].abs().sum() == 0
    # cell 6: after two reductions, C = 64 at 8x8
    assert flops[6, 0, sep3] == 2 * (64 * 9 + 64 * 64) * 8 * 8


def test_size_and_flops_costs_match_the_ops_weights_and_multiply_adds():
    net = SPACE.build_supernet(input_shape=(3, 12, 12), channels=4, cells=3)   # cells: normal, reduce, reduce
    size = SPACE.op_costs("size", channels=4, cells=3, input_size=12)
    flops = SPACE.op_costs("flops", channels=4, cells=3, input_size=12)
    for g, (h, cell) in enumerate(zip((12, 12, 6), net.cells)):
        for e in (0, 4):                                  # a stride-2 edge (from x0) and a stride-1 edge
            row = e + 14 * cell.reduction
            h_in = h // 2 if cell.reduction and e == 4 else h   # edge 3<-2 of a reduction: output resolution
            for k, op in enumerate(cell.edges[e].ops):
                convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
                assert size[g, row, k] == sum(m.weight.numel() for m in convs)
                if convs:
                    assert flops[g, row, k] == count_flops(op, (cell.pre1[1].out_channels, h_in, h_in))


def test_resource_table_normalises_by_cells_per_type():
    costs, weight = SPACE.resource_table("size", channels=16, cells=8)
    assert costs.shape == (8, 28, 8)
    assert torch.allclose(weight, torch.tensor([1 / 6, 1 / 6, 1 / 2, 1 / 6, 1 / 6, 1 / 2, 1 / 6, 1 / 6],
                                               dtype=torch.float64))
    five = SPACE.resource_table("mac", cells=5)[1]               # reductions at cells 1 and 3
    assert torch.allclose(five, torch.tensor([1 / 3, 1 / 2, 1 / 3, 1 / 2, 1 / 3], dtype=torch.float64))


def test_op_cost_rejects_unknown_resource():
    with pytest.raises(UserError, match="unknown resource 'latency'"):
        SPACE.op_costs("latency")
    assert op_cost("none", "mac", 16, 32, 2) == 0


def test_count_flops_hand_value():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.dw(self.conv(x)).mean((2, 3)))

    assert count_flops(Tiny(), (3, 5, 5)) == 8 * 25 * 3 * 9 + 8 * 25 * 9 + 80


def test_genotype_str_is_the_darts_form():
    g = Genotype((("sep_conv_3x3", 0),) * 8, (2, 3, 4, 5), (("max_pool_3x3", 1),) * 8, (2, 3, 4, 5))
    assert str(g).startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 0),")
    assert str(g).endswith("('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
