"""DARTS second order (``oneshot.unrolled``, ``--hp order=2``): the finite-difference unrolled gate gradient
against d/da L_val(w − ξ·step(∇w L_train(w, a)), a) computed exactly by double backward, on problems small enough
for that."""

import copy
import math

import pytest
import torch
from torch import nn

from oneshot import unrolled
from oneshot.config import preset
from oneshot.errors import UserError
from oneshot.runs import RunFolder
from oneshot.spaces.base import Categorical, SearchSpace
from oneshot.strategies import create
from oneshot.strategies.base import Strategy
from oneshot.trainer import Search

from conftest import interrupted_and_resumed

LR, MOMENTUM, WEIGHT_DECAY = 0.4, 0.9, 0.05


# --- a tiny problem: gates (2 x 3), weights W (3 x 3) and v (3), float64 -------------------------------------
class Tiny:
    """pred = tanh(x @ (W * a0)) @ (v * a1) (curved), or Σ x @ (W * a0) + x @ (v * a1): linear in the weights, so
    that the losses are quadratic in them and the central difference is exact up to rounding.
    The training loss has a random term drawn inside it, as drop-path does: the finite difference must replay it."""

    def __init__(self, curved: bool, chunks: int = 1):
        g = torch.Generator().manual_seed(1)
        self.curved, self.chunks = curved, chunks
        draw = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64)
        self.W, self.v = nn.Parameter(draw(3, 3)), nn.Parameter(draw(3))
        self.gates = torch.softmax(draw(2, 3), -1)
        self.x_train, self.y_train, self.x_val, self.y_val = draw(8, 3), draw(8), draw(8, 3), draw(8)
        self.buffers = [0.3 * draw(3, 3), 0.3 * draw(3)]  # momentum buffers from an earlier step

    @property
    def weights(self):
        return [self.W, self.v]

    def loss(self, weights, gates, x, y, noisy):
        W, v = weights
        h = x @ (W * gates[0])
        pred = torch.tanh(h) @ (v * gates[1]) if self.curved else h.sum(-1) + x @ (v * gates[1])
        target = y + (0.3 * torch.randn(y.shape, dtype=y.dtype) if noisy else 0.0)  # drawn from the global stream
        return ((pred - target) ** 2).mean()

    def train_losses(self, gates):
        for x, y in zip(self.x_train.chunk(self.chunks), self.y_train.chunk(self.chunks)):
            yield self.loss(self.weights, gates, x, y, noisy=True) / self.chunks

    def val_losses(self, gates):
        for x, y in zip(self.x_val.chunk(self.chunks), self.y_val.chunk(self.chunks)):
            loss = self.loss(self.weights, gates, x, y, noisy=False) / self.chunks
            yield loss, loss

    def unrolled(self, nesterov: bool, **changes):
        options = dict(lr=LR, momentum_buffers=self.buffers, momentum=MOMENTUM, nesterov=nesterov,
                       weight_decay=WEIGHT_DECAY, **changes)
        return unrolled.unrolled_gate_gradient(self.gates, self.weights, self.train_losses, self.val_losses, **options)

    def exact(self, nesterov: bool, seed: int, lr=LR, momentum=MOMENTUM, at_w_prime=True, max_norm=math.inf):
        """d/da L_val(w', a) by double backward, w' = the SGD step written out independently of the library
        (the clipping factor held constant, as DARTS's RNN code holds it); the training noise is drawn from
        ``seed``, as the first training pass of ``unrolled`` drew it."""
        a = self.gates.clone().requires_grad_()
        w = [p.detach().clone().requires_grad_() for p in self.weights]
        torch.manual_seed(seed)
        train = sum(self.loss(w, a, x, y, True) / self.chunks
                    for x, y in zip(self.x_train.chunk(self.chunks), self.y_train.chunk(self.chunks)))
        g = torch.autograd.grad(train, w, create_graph=True)
        d = [gi + WEIGHT_DECAY * wi for gi, wi in zip(g, w)]
        norm = torch.cat([di.detach().reshape(-1) for di in d]).norm()
        d = [di * min(1.0, max_norm / (float(norm) + 1e-6)) for di in d]
        if nesterov:  # torch SGD: buf' = μ buf + d; step = d + μ buf'
            w_prime = [wi - lr * ((1 + momentum) * di + momentum ** 2 * b) for wi, di, b in zip(w, d, self.buffers)]
        else:         # DARTS's architect: w − ξ(μ buf + g + wd w)
            w_prime = [wi - lr * (momentum * b + di) for wi, di, b in zip(w, d, self.buffers)]
        val = self.loss(w_prime if at_w_prime else w, a, self.x_val, self.y_val, False)
        return torch.autograd.grad(val, a)[0]


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("nesterov, max_norm", [(False, math.inf), (True, math.inf), (True, 0.05), (False, 0.05)])
@pytest.mark.parametrize("curved, tolerance", [(False, 1e-9), (True, 1e-5)])
def test_unrolled_gradient_is_the_exact_derivative_through_the_virtual_step(curved, tolerance, nesterov, max_norm,
                                                                           chunks):
    """Quadratic losses: the central difference is exact up to rounding. Curved: its error is O(R²), R·‖v‖ = 0.01
    (measured: up to 1.6e-6 relative here; quadratic: 1.4e-14)."""
    problem = Tiny(curved, chunks)
    torch.manual_seed(7)
    got, _ = problem.unrolled(nesterov, max_norm=max_norm)
    exact = problem.exact(nesterov, seed=7, max_norm=max_norm)
    assert relative_error(got, exact) < tolerance
    # what the test can tell apart: the first-order gradient, the gradient without momentum, and (when the clip
    # binds, as 0.05 does here: ‖g + wd·w‖ is 2.9 and 0.13) the unclipped one are far from it
    assert relative_error(problem.exact(nesterov, seed=7, lr=0.0), exact) > 0.05
    assert relative_error(problem.exact(nesterov, seed=7, momentum=0.0, max_norm=max_norm), exact) > 0.01
    if max_norm < math.inf:
        assert relative_error(problem.exact(nesterov, seed=7), exact) > 0.01


def test_weights_back_bit_exactly_and_the_random_stream_as_after_one_train_and_one_val_pass():
    problem = Tiny(curved=True)
    before = [p.detach().clone() for p in problem.weights]
    torch.manual_seed(3)
    problem.unrolled(nesterov=True)
    after_call = torch.get_rng_state()
    assert all(torch.equal(p, b) for p, b in zip(problem.weights, before))
    torch.manual_seed(3)
    for _ in problem.train_losses(problem.gates):
        pass
    for _ in problem.val_losses(problem.gates):
        pass
    assert torch.equal(torch.get_rng_state(), after_call)


def test_no_weights_or_a_zero_direction_gives_the_first_order_gradient():
    problem = Tiny(curved=True)
    gates = problem.gates.clone().requires_grad_()
    (direct,) = torch.autograd.grad(sum(o for _, o in problem.val_losses(gates)), gates)
    got, _ = unrolled.unrolled_gate_gradient(problem.gates, [], problem.train_losses, problem.val_losses, lr=LR)
    assert torch.equal(got, direct)
    # a validation loss that no weight reaches: dL_val/dw' = 0, R would be infinite; the product is 0
    gate_only = lambda g: [((g - 0.5) ** 2).sum()] * 2
    got, _ = unrolled.unrolled_gate_gradient(problem.gates, problem.weights, problem.train_losses,
                                             lambda g: [tuple(gate_only(g))], lr=LR)
    assert torch.equal(got, 2 * (problem.gates - 0.5))


def test_batch_norm_statistics_move_once_as_by_the_validation_pass_at_w_prime():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    x_train, y_train, x_val, y_val = (torch.randn(8, k, dtype=torch.float64) for k in (3, 1, 3, 1))
    gates = torch.tensor([[0.3, 0.7]], dtype=torch.float64)

    def loss(x, y, g):
        return ((net(x) * g[0, 0] + net(x * 2) * g[0, 1] - y) ** 2).mean()

    weights = list(net.parameters())
    twin = copy.deepcopy(net)
    got, _ = unrolled.unrolled_gate_gradient(gates, weights, lambda g: [loss(x_train, y_train, g)],
                                             lambda g: [(loss(x_val, y_val, g),) * 2], lr=LR, weight_decay=WEIGHT_DECAY,
                                             buffers=list(net.buffers()))
    # the twin: one val pass at w' (the SGD step from the twin's own training gradient, running statistics kept)
    saved = [b.clone() for b in twin.buffers()]
    train = ((twin(x_train) * gates[0, 0] + twin(x_train * 2) * gates[0, 1] - y_train) ** 2).mean()
    grads = torch.autograd.grad(train, list(twin.parameters()))
    with torch.no_grad():
        for b, s in zip(twin.buffers(), saved):
            b.copy_(s)
        for p, g in zip(twin.parameters(), grads):
            p -= LR * (g + WEIGHT_DECAY * p)
        twin(x_val), twin(x_val * 2)
    for mine, expected in zip(net.buffers(), twin.buffers()):
        assert torch.equal(mine, expected)
    assert not torch.equal(next(net.buffers()), saved[0])  # they did move


@pytest.mark.parametrize("max_norm", [math.inf, 1.0])
@pytest.mark.parametrize("nesterov", [False, True])
def test_virtual_step_is_the_trainers_weight_step(nesterov, max_norm):
    g = torch.Generator().manual_seed(0)
    weights = [nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64)) for _ in range(2)]
    optimizer = torch.optim.SGD(weights, lr=LR, momentum=MOMENTUM, nesterov=nesterov)
    for _ in range(2):  # the first step has no momentum buffer yet, the second has one
        grads = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in weights]
        buffers = [optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
        expected, scale = unrolled.virtual_step(weights, grads, buffers, LR, MOMENTUM, nesterov, WEIGHT_DECAY, max_norm)
        for w, grad in zip(weights, grads):
            w.grad = grad + WEIGHT_DECAY * w.detach()  # the trainer's coupled weight decay, then clipping
        norm = torch.nn.utils.clip_grad_norm_(weights, max_norm)
        optimizer.step()
        kappa = min(1.0, max_norm / (float(norm) + 1e-6))
        assert kappa < 1 if max_norm < math.inf else kappa == 1
        assert scale == pytest.approx((1 + MOMENTUM if nesterov else 1) * kappa, rel=1e-12)
        for w, e in zip(weights, expected):
            torch.testing.assert_close(w.detach(), e, rtol=0, atol=1e-14)


# --- through the trainer -------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """Mean RGB -> tanh(BN(3 mixed linear ops)) -> 10 logits by 3 mixed linear ops, in float64."""

    def __init__(self, num_outputs):
        super().__init__()
        self.first = nn.ModuleList(nn.Linear(3, 6) for _ in range(3))
        self.norm = nn.BatchNorm1d(6)
        self.second = nn.ModuleList(nn.Linear(6, num_outputs) for _ in range(3))
        self.double()

    def forward(self, x, gates=None, active=None, unit_gates=False, inactive_grad=False):
        h = x.double().mean((2, 3))
        h = torch.tanh(self.norm(sum(gates[0, k] * op(h) for k, op in enumerate(self.first))))
        return sum(gates[1, k] * op(h) for k, op in enumerate(self.second))


class TinySpace(SearchSpace):
    name = "tiny"

    def __init__(self):
        super().__init__([Categorical(f"d{i}", ("a", "b", "c")) for i in range(2)])

    def build_supernet(self, input_shape=None, num_outputs=10, **ignored):
        return TinyNet(num_outputs)


class Recorded:
    """A stream that keeps the batches it hands out."""

    def __init__(self, stream):
        self.stream, self.batches = stream, []
        self.steps_per_epoch = stream.steps_per_epoch

    def __next__(self):
        self.batches.append(next(self.stream))
        return self.batches[-1]


def tiny_search(synthetic_cifar, order, virtual_clip=True, **changes):
    config = preset("smoke", strategy="darts", strategy_options={"order": order, "virtual_clip": virtual_clip},
                    n_weight=32, n_arch=32, batch_size=8, epochs=2, warmup_epochs=1, w_lr=0.5, w_weight_decay=0.05,
                    **changes)
    search = Search(config, synthetic_cifar, torch.device("cpu"), space=TinySpace())
    for _ in range(search.steps_per_epoch):  # warm-up: the momentum buffers fill
        search.weight_step("warmup")
        search.step += 1
    search.train_stream, search.val_stream = Recorded(search.train_stream), Recorded(search.val_stream)
    told = []
    tell = search.strategy.tell
    search.strategy.tell = lambda samples, losses, grads, phase: (told.append(grads),
                                                                  tell(samples, losses, grads, phase))
    return search, told


def exact_trainer_gradient(search, gates, train_batch, val_batch, max_norm):
    """d/da L_val(w', a) by double backward with the trainer's settings (Nesterov SGD, coupled decay, clipping at
    ``max_norm`` with the factor held constant)."""
    config, model = search.config, search.model
    names = [n for n, p in model.named_parameters()]
    w = [p.detach().clone().requires_grad_() for p in model.parameters()]
    buffers = [search.optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    a = gates.clone().requires_grad_()
    call = lambda ws, batch: nn.functional.cross_entropy(
        torch.func.functional_call(model, dict(zip(names, ws)), (batch[0],), {"gates": a}), batch[1])
    g = torch.autograd.grad(call(w, train_batch), w, create_graph=True)
    mu, lr = config.w_momentum, search.weight_lr()
    assert config.w_nesterov
    d = [gi + config.w_weight_decay * wi for gi, wi in zip(g, w)]
    kappa = min(1.0, max_norm / (float(torch.cat([di.detach().reshape(-1) for di in d]).norm()) + 1e-6))
    w_prime = [wi - lr * ((1 + mu) * kappa * di + mu ** 2 * b) for wi, di, b in zip(w, d, buffers)]
    return torch.autograd.grad(call(w_prime, val_batch), a)[0]


@pytest.mark.parametrize("w_grad_clip, virtual_clip", [(1.0, True), (0.05, True), (0.05, False)])
def test_the_trainer_hands_darts_the_unrolled_gradient_and_leaves_the_weights(synthetic_cifar, w_grad_clip,
                                                                              virtual_clip):
    """At clip 1 the tiny net's step is not clipped; at 0.05 it is, and ``virtual_clip`` decides whether the
    virtual step is too (DARTS's RNN code) or not (its CNN code)."""
    search, told = tiny_search(synthetic_cifar, order=2, virtual_clip=virtual_clip, w_grad_clip=w_grad_clip)
    before = copy.deepcopy(search.model.state_dict())
    optimizer_before = copy.deepcopy(search.optimizer.state_dict())
    gates = search.strategy.probabilities()
    search.arch_step()
    (grad,) = told[-1]
    # weights bit-exactly back; BN running statistics moved by one forward (the val pass), not four
    assert all(torch.equal(p, before[k]) for k, p in search.model.named_parameters())
    assert search.model.norm.num_batches_tracked == before["norm.num_batches_tracked"] + 1
    after_arch_step = copy.deepcopy(search.model.state_dict())
    train_batch, val_batch = search.train_stream.batches[-1], search.val_stream.batches[-1]
    max_norm = w_grad_clip if virtual_clip else math.inf
    exact = exact_trainer_gradient(search, gates, train_batch, val_batch, max_norm)
    # the finite difference through BN: measured 3.0e-4 at r = 0.01 (3e-2 at r = 0.1, 3e-6 at r = 0.001: O(r²))
    assert relative_error(grad.double(), exact) < 1e-3
    other = exact_trainer_gradient(search, gates, train_batch, val_batch, 0.05 if max_norm == math.inf else math.inf)
    assert (relative_error(other, exact) > 0.01) == (w_grad_clip == 0.05)  # the clip binds at 0.05 only
    assert str(search.optimizer.state_dict()) == str(optimizer_before)
    search.model.load_state_dict(after_arch_step)  # the references ran the model (and moved its statistics)
    # the weight step that follows trains on the batch the virtual step used (DARTS's loop)
    search.weight_step("weight")
    assert len(search.train_stream.batches) == 1
    # and what the test can tell apart: the first-order gradient is far from it
    assert relative_error(exact, exact_first_order(search, before, gates, val_batch)) > 0.01


def exact_first_order(search, state, gates, batch):
    model = copy.deepcopy(search.model)
    model.load_state_dict(state)
    a = gates.clone().requires_grad_()
    return torch.autograd.grad(nn.functional.cross_entropy(model(batch[0], gates=a), batch[1]), a)[0].double()


def test_order_1_hands_darts_the_gradient_at_the_current_weights(synthetic_cifar):
    search, told = tiny_search(synthetic_cifar, order=1)
    state = copy.deepcopy(search.model.state_dict())
    gates = search.strategy.probabilities()
    search.arch_step()
    (grad,) = told[-1]
    assert search.train_stream.batches == []  # no training batch drawn by the arch step
    a = gates.clone().requires_grad_()
    batch = search.val_stream.batches[-1]
    (direct,) = torch.autograd.grad(nn.functional.cross_entropy(search.model(batch[0], gates=a), batch[1]), a)
    assert torch.equal(grad, direct)
    assert all(torch.equal(p, state[k]) for k, p in search.model.named_parameters())


def nb201_config(**changes):
    # no θ weight decay: θ moves by the gradient alone
    return preset("smoke", strategy="darts", strategy_options={"order": 2, "weight_decay": 0.0}, channels=4,
                  cells_per_stage=1, n_weight=32, n_arch=32, batch_size=8, epochs=2, warmup_epochs=1, **changes)


def test_order_2_search_on_nb201_runs_end_to_end(tmp_path, synthetic_cifar):
    config = nb201_config()
    result = Search(config, synthetic_cifar, torch.device("cpu")).run(RunFolder(tmp_path, config.to_dict()),
                                                                     progress=False)
    assert result["arch_steps"] == 4 and result["iterations"] == 8
    theta = torch.tensor(result["theta"])
    assert torch.isfinite(theta).all() and (theta - 1).abs().max() > 1e-5


def test_order_2_with_micro_batches_resumes_exactly(tmp_path, synthetic_cifar):
    """The arch step's training batch goes to the weight step of the same iteration, never into a checkpoint."""
    config = nb201_config(micro_batches=2, checkpoint_every=3)
    full = Search(config, synthetic_cifar, torch.device("cpu")).run(RunFolder(tmp_path / "full", config.to_dict()),
                                                                   progress=False)
    resumed = interrupted_and_resumed(config, synthetic_cifar, tmp_path / "cut", stop_after=5)
    assert resumed["theta"] == full["theta"] and resumed["arch_steps"] == full["arch_steps"] == 4


# --- refusals ------------------------------------------------------------------------------------------------
def test_bad_orders_and_settings_are_refused():
    space = TinySpace()
    with pytest.raises(UserError, match="order must be 1"):
        create("darts", space, order=3)
    assert create("darts", space).arch_gradient == "direct"
    darts2 = create("darts", space, order="2")  # --hp values arrive as strings
    assert darts2.arch_gradient == "unrolled"
    with pytest.raises(UserError, match="one process"):
        unrolled.check_applicable(darts2, "unrolled", world=2)
    single_level = Strategy(space)
    single_level.arch_batch = "same"
    with pytest.raises(UserError, match="validation batch"):
        unrolled.check_applicable(single_level, "unrolled", world=1)
    with pytest.raises(UserError, match="knows 'direct'"):
        unrolled.check_applicable(single_level, "third", world=1)
    unrolled.check_applicable(single_level, "direct", world=2)
