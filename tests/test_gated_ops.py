"""The cheap gate paths of ``oneshot.supernet``: each returns what ``sum_k gate[k] * op_k(x)`` returns, with
``dL/dgate[k] = <dL/dout, op_k(x)>``, and leaves the weights' gradients and BN statistics as the child has them."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oneshot.supernet import MixedOp, UnitGate, WeightedSum, unit_gated, unit_gated_batch_norm


class Constant(nn.Module):
    """An op whose output is a fixed tensor (times 1 + 0 * x, so that x gets a gradient)."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, x):
        return self.values + 0 * x


def test_weighted_sum_by_hand():
    y0, y1 = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0, -1.0], requires_grad=True)
    gate = torch.tensor([0.25, 0.5, 0.75], requires_grad=True)
    out = WeightedSum.apply(gate, [0, 2], y0, y1)
    assert out.tolist() == [0.25 * 1 + 0.75 * 3, 0.25 * 2 - 0.75]
    (out * torch.tensor([1.0, 2.0])).sum().backward()
    assert gate.grad.tolist() == [1 + 4, 0.0, 3 - 2]          # <w, y_k>; the op that did not run: 0
    assert y0.grad.tolist() == [0.25, 0.5] and y1.grad.tolist() == [0.75, 1.5]   # gate_k * w


class CountingZero(nn.Module):
    is_zero = True
    calls = 0

    def forward(self, x):
        CountingZero.calls += 1
        return x.mul(0.0)


def test_none_is_skipped_beside_other_ops_and_its_gate_gets_zero():
    torch.manual_seed(0)
    mixed = MixedOp([CountingZero(), nn.Linear(3, 3), nn.Tanh()])
    x = torch.randn(4, 3)
    gate = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    CountingZero.calls = 0
    out = mixed(x, gate, None)
    assert CountingZero.calls == 0
    assert torch.equal(out, 0.3 * mixed.ops[1](x) + 0.5 * torch.tanh(x))
    out.sum().backward()
    assert gate.grad[0] == 0.0 and gate.grad[1].abs() > 1e-3
    # alone, it still runs: the edge's output is its zero tensor
    assert torch.equal(mixed(x, None, [0]), torch.zeros(4, 3)) and CountingZero.calls == 1


def test_ops_starting_with_relu_share_it_and_match_separate_ops():
    torch.manual_seed(0)
    ops = [nn.Sequential(nn.ReLU(), nn.Linear(3, 3)), nn.Sequential(nn.ReLU(), nn.Linear(3, 3)), nn.Identity()]
    mixed = MixedOp(ops)
    relu_calls = []
    for op in ops[:2]:
        op[0].register_forward_hook(lambda *a: relu_calls.append(1))
    x = torch.randn(5, 3, requires_grad=True)
    gate = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    out = mixed(x, gate, None)
    assert relu_calls == []  # neither op's own ReLU ran: one shared torch.relu did
    expected = gate[0] * ops[0](x) + gate[1] * ops[1](x) + gate[2] * x
    assert torch.equal(out, expected)
    out.square().sum().backward()
    got = (x.grad.clone(), gate.grad.clone())
    x.grad, gate.grad = None, None
    expected.square().sum().backward()
    assert torch.allclose(got[0], x.grad, atol=1e-6) and torch.allclose(got[1], gate.grad, atol=1e-6)


@pytest.mark.parametrize("affine", [False, True])
def test_unit_gated_batch_norm_is_the_batch_norm_and_gives_the_gate_its_dot_product(affine):
    torch.manual_seed(0)
    plain, gated = nn.BatchNorm2d(3, affine=affine), nn.BatchNorm2d(3, affine=affine)
    if affine:
        with torch.no_grad():
            for bn in (plain, gated):
                bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
                bn.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    h = torch.randn(4, 3, 5, 5)
    w = torch.randn(4, 3, 5, 5)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    gate = torch.ones((), requires_grad=True)
    out_plain = plain(h1)
    out_gated = unit_gated_batch_norm(gated, h2, gate)
    assert torch.equal(out_plain, out_gated)
    (out_plain * w).sum().backward()
    (out_gated * w).sum().backward()
    assert torch.equal(h1.grad, h2.grad)
    for a, b in zip(plain.parameters(), gated.parameters()):
        assert torch.equal(a.grad, b.grad)
    for a, b in zip(plain.buffers(), gated.buffers()):  # running mean, variance and the batch count
        assert torch.equal(a, b)
    assert gate.grad.item() == pytest.approx((w * out_plain).sum().item(), rel=1e-5, abs=1e-5)


def test_unit_gated_ops_match_the_generic_unit_gate():
    """AvgPool2d (dL/dgate from its input gradient) and a Sequential ending in BN (from the BN's backward)."""
    torch.manual_seed(0)
    ops = [nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1),
           nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2, affine=False))]
    x = torch.randn(3, 2, 6, 6)
    for op in ops:
        grads = []
        for fn in (unit_gated, lambda op, x, g: UnitGate.apply(op(x), g)):
            xi = x.clone().requires_grad_()
            gate = torch.ones((), requires_grad=True)
            out = fn(op, xi, gate)
            w = torch.linspace(-1, 1, out.numel()).view_as(out)
            (out * w).sum().backward()
            grads.append((out.detach(), xi.grad, gate.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert grads[0][2].item() == pytest.approx(grads[1][2].item(), rel=1e-5)
        assert abs(grads[0][2].item()) > 1e-3


def test_one_hot_supernet_step_matches_the_child_bit_for_bit():
    """Values, weight gradients and BN statistics of a gated one-hot NB201 step are the child's."""
    from oneshot.spaces import create_space
    from oneshot.spaces.nb201 import child_from_supernet

    torch.manual_seed(0)
    space = create_space("nb201")
    arch = (2, 3, 0, 1, 3, 2)
    supernet = space.build_supernet(channels=4, cells_per_stage=1)
    child = child_from_supernet(space, supernet, arch)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(10, (6,))
    gates = torch.zeros(6, 4)
    gates[range(6), list(arch)] = 1.0
    gates.requires_grad_()
    out_super = supernet(x, gates, [[k] for k in arch], unit_gates=True)
    out_child = child(x)
    assert torch.equal(out_super, out_child)
    F.cross_entropy(out_super, y).backward()
    F.cross_entropy(out_child, y).backward()
    child_grads = {k: p.grad for k, p in child.named_parameters()}
    used = [(key, p) for key, p in supernet.named_parameters() if p.grad is not None]
    assert len(used) == len(child_grads)
    for key, p in used:
        assert torch.equal(p.grad, child_grads[re.sub(r"\.ops\.\d+\.", ".ops.0.", key)]), key
    assert gates.grad[range(6), list(arch)].abs().min() > 0


def test_unit_gated_batch_norm_in_eval_mode_uses_running_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2, affine=False)
    bn.running_mean.fill_(0.5)
    bn.running_var.fill_(4.0)
    bn.eval()
    h = torch.randn(3, 2, 4, 4)
    gate = torch.ones((), requires_grad=True)
    out = unit_gated_batch_norm(bn, h, gate)
    assert torch.allclose(out, (h - 0.5) / (4.0 + bn.eps) ** 0.5)
    out.sum().backward()
    assert gate.grad.item() == pytest.approx(out.sum().item(), rel=1e-5)
    assert bn.num_batches_tracked.item() == 0


def test_ops_with_forward_hooks_run_as_modules():
    torch.manual_seed(0)
    ops = [CountingZero(), nn.Sequential(nn.ReLU(), nn.Linear(3, 3)), nn.Sequential(nn.ReLU(), nn.Linear(3, 3)),
           nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))]
    mixed = MixedOp(ops)
    seen = []
    for k, op in enumerate(ops):
        op.register_forward_hook(lambda m, i, o, k=k: seen.append(k))
    x = torch.randn(4, 3)
    mixed(x, torch.full((4,), 0.25), None)                # dense: not taken apart (none is skipped all the same)
    assert seen == [1, 2, 3]
    seen.clear()
    mixed(x, torch.tensor([0.0, 0.0, 0.0, 1.0]), [3], unit_gates=True)  # one-hot: the BN op is not taken apart
    assert seen == [3]
