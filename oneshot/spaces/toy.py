"""The AdvantageNAS toy regression (spec advantagenas.md §3): 10 positions x 10 candidates, no weights to train.

Position n applies a fixed random Conv(1->10, k=7, stride 2) to x in U[-1,1]^{1x13x13}, giving 10 maps of 4x4;
candidate c is channel c. The chosen (or gate-weighted) channels go through tanh and a fixed Conv(1->1, k=4, no
bias), i.e. a dot product with a 4x4 kernel, giving one scalar per position; the output is the mean over
positions. The teacher is the same network with a random one-hot architecture, so the argmax architecture's
loss is exactly 0 once it equals the teacher's.

Only θ is learned, so the network holds buffers only (the trainer then runs architecture steps only). The 10
first convs are one Conv(1->100), the 10 second convs one einsum: a step costs a few small kernels, not 20
module calls.

The fixed network and the teacher are part of the space: ``ToySpace(seed=s)`` draws the convs from a generator
seeded by ``s`` and then, from the same generator, the teacher (``teacher()``), so every supernet that
``build_supernet`` returns is the same network, and the toy task built for trial ``s`` holds its teacher.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Architecture, Categorical, SearchSpace

INPUT_SIZE = 13   # 13x13 input -> (13 - 7) / 2 + 1 = 4x4 maps
KERNEL = 7
STRIDE = 2
MAP = 4


class ToySpace(SearchSpace):
    name = "toy"

    def __init__(self, positions: int = 10, candidates: int = 10, seed: int = 0):
        super().__init__([Categorical(f"pos{n}", tuple(f"c{c}" for c in range(candidates)))
                          for n in range(positions)])
        self.positions, self.candidates, self.seed = positions, candidates, seed

    def _draw(self) -> tuple["ToyNetwork", torch.Generator]:
        generator = torch.Generator().manual_seed(self.seed)
        return ToyNetwork(self.positions, self.candidates, generator), generator

    def teacher(self) -> Architecture:
        """The random one-hot teacher of this trial: drawn after the convs, from the same generator."""
        _, generator = self._draw()
        return tuple(int(v) for v in torch.randint(self.candidates, (self.positions,), generator=generator))

    def build_supernet(self, input_shape: Sequence[int] | None = None, num_outputs: int | None = None,
                       **ignored) -> "ToyNetwork":
        """The fixed network (the same one on every call); ``ignored``: the trainer's image-network settings."""
        check_shapes(input_shape, num_outputs)
        return self._draw()[0]

    def build_child(self, arch: Sequence[int], input_shape: Sequence[int] | None = None,
                    num_outputs: int | None = None, **ignored) -> "ToyChild":
        check_shapes(input_shape, num_outputs)
        return ToyChild(self._draw()[0], self.check(arch))


def check_shapes(input_shape, num_outputs) -> None:
    if input_shape is not None and tuple(input_shape) != (1, INPUT_SIZE, INPUT_SIZE):
        raise UserError(f"toy: the network reads 1x{INPUT_SIZE}x{INPUT_SIZE} inputs, the task gives "
                        f"{tuple(input_shape)}; use the toy task")
    if num_outputs not in (None, 1):
        raise UserError(f"toy: the network has one output, the task wants {num_outputs}; use the toy task")


class ToyNetwork(nn.Module):
    """``forward(x, gates, active, unit_gates, inactive_grad)`` with the NB201 supernet's gate semantics."""

    def __init__(self, positions: int = 10, candidates: int = 10, generator: torch.Generator | None = None):
        super().__init__()
        self.positions, self.candidates = positions, candidates
        # Chainer's default (LeCun normal, std 1/sqrt(fan_in)) as in the official toy; its first conv has a bias
        # initialised to 0 and never trained, so it is left out.
        self.register_buffer("conv", torch.randn(positions * candidates, 1, KERNEL, KERNEL,
                                                 generator=generator) / KERNEL)
        self.register_buffer("head", torch.randn(positions, MAP, MAP, generator=generator) / MAP)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 13) -> (B, positions, candidates, 4, 4): every candidate of every position at once."""
        return F.conv2d(x, self.conv, stride=STRIDE).view(len(x), self.positions, self.candidates, MAP, MAP)

    def coefficients(self, gates: torch.Tensor | None, active: Sequence[Sequence[int]] | None,
                     inactive_grad: bool = False):
        """The (positions, candidates) weights of the channel mix, and the GDAS term (None when not asked).

        Ops outside ``active`` get weight 0 and therefore dL/dgate = 0, as in ``MixedOp`` where they never run.
        A mix over channels costs the same whether one or ten ops are active, so ``unit_gates`` needs no
        fast path here: multiplying by a gate of 1 gives the same value and dL/dgate = <dL/de, channel>.
        """
        if active is None:
            mask = None
        else:
            rows = [n for n, ops in enumerate(active) for _ in ops]
            cols = [k for ops in active for k in ops]
            mask = torch.zeros(self.positions, self.candidates, device=self.conv.device)
            mask[rows, cols] = 1.0  # one indexing op, not one per position
        if gates is None:
            return (torch.ones(self.positions, self.candidates, device=self.conv.device) if mask is None else mask), None
        gates = gates[:, : self.candidates]
        coeff = gates if mask is None else gates * mask
        extra = None
        if inactive_grad and mask is not None and gates.requires_grad:
            # GDAS adds gate_j * 1 for every op j that did not run: value 0, dL/dgate_j = sum(dL/de).
            # (g - g.detach()) is exactly 0 in value and has gradient 1: the same as InactiveGates.
            off = gates * (1.0 - mask)
            extra = (off - off.detach()).sum(-1)
        return coeff, extra

    def head_output(self, feats: torch.Tensor, gates: torch.Tensor | None = None,
                    active: Sequence[Sequence[int]] | None = None, unit_gates: bool = False,
                    inactive_grad: bool = False) -> torch.Tensor:
        """The output (B,) from precomputed ``features``: lets a teacher and a student share one conv."""
        coeff, extra = self.coefficients(gates, active, inactive_grad)
        mixed = torch.einsum("bnkhw,nk->bnhw", feats, coeff)
        if extra is not None:
            mixed = mixed + extra[None, :, None, None]
        per_position = torch.einsum("bnhw,nhw->bn", torch.tanh(mixed), self.head)
        return per_position.mean(-1)

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None,
                active: Sequence[Sequence[int]] | None = None, unit_gates: bool = False,
                inactive_grad: bool = False) -> torch.Tensor:
        return self.head_output(self.features(x), gates, active, unit_gates, inactive_grad)

    def one_hot_output(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """``forward(x, None, [[k] for k in arch])`` computing only the 10 chosen channels (5x cheaper): the
        toy task's teacher, run on every training batch. The mix of a one-hot forward adds exact zeros, so the
        two agree to the last bit wherever the convolution of a channel does not depend on its neighbours."""
        channels = torch.arange(self.positions, device=self.conv.device) * self.candidates + torch.as_tensor(arch)
        chosen = F.conv2d(x, self.conv[channels], stride=STRIDE)
        return torch.einsum("bnhw,nhw->bn", torch.tanh(chosen), self.head).mean(-1)

    def single_path_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, positions, candidates): each position's scalar for each single candidate.

        A one-hot architecture's output is the mean over positions of one entry per position, so a table of
        these scores any number of architectures on the same batch for the price of one forward.
        """
        with torch.no_grad():
            return torch.einsum("bnkhw,nhw->bnk", torch.tanh(self.features(x)), self.head)


class ToyChild(nn.Module):
    """One architecture of the fixed network, stand-alone: ``forward(x)``."""

    def __init__(self, network: ToyNetwork, arch: Architecture):
        super().__init__()
        self.network, self.active = network, [[k] for k in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, None, self.active)
