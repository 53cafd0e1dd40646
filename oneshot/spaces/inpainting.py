"""ASNG-NAS's inpainting space (spec asng.md §3 "Inpainting"): a CGP-style convolutional autoencoder.

Nodes: node 0 is the (masked) input image; encoder nodes 1..L are conv layers. Each encoder node i has
- ``in{i}``: which earlier node it reads, among the last ``LEVEL_BACK`` = 5 (node 0 included while in reach);
- its layer, in one of two encodings (spec):
  * ``"int"``: ``skip{i}`` ∈ {0, 1} (Categorical), ``kidx{i}`` ∈ [1, 3] (Integer kernel index;
    k = 2·index - 1 ∈ {1, 3, 5}), ``ch{i}`` ∈ [64·s, 256·s] (Integer, s = ``channel_scale``);
  * ``"cat"``: ``op{i}``, one 6-way Categorical over (skip, k) ∈ {0, 1} × {1, 3, 5}, and ``ch{i}`` ∈
    {64·s, 128·s, 256·s} (Categorical).
The ``out`` decision picks the encoder node the decoder starts from (one of the last 5). Only the *active path*
(``out``, its input, that node's input, ... down to node 0) is computed, as in CGP: other nodes are neutral.
The decoder mirrors the path: one transposed conv per active encoder layer, in reverse order, mapping that
layer's output channels back to its input channels (3 for the layer reading the image); where the encoder
layer has skip = 1, the decoder adds that layer's input tensor to its own output.

Simplifications vs E-CAE / the official code (documented, on purpose):
- every conv has stride 1 and padding k // 2, so all feature maps keep the image size (no down-sampling);
- ReLU after every conv and transposed conv except the last one (linear output, trained with MSE on [0, 1]
  images); no batch norm, so weight sharing needs nothing but slicing;
- the encoder has L layers (``layers``, default 4 for CPU; the paper uses 20, 10 is a paper-like middle);
- ``channel_scale`` s multiplies the paper's channel range (64..256): s = 1/8 gives Int ∈ [8, 32] and
  Cat ∈ {8, 16, 32}; the decisions keep their meaning (an integer channel count, Gaussian-searched in "int").

Weight sharing (``build_supernet``): each encoder/decoder layer owns one max-size weight (256·s channels
on both sides, 5×5) and bias; an architecture uses the top-left [:c_out, :c_in] slice and the central k×k
crop. So every architecture shares every weight it uses with every other one. ``build_child(arch)`` makes
a stand-alone network of exact sizes (only the active layers), with the same forward code.

The supernet has the standard gated forward ``forward(x, gates=None, active=None, ...)`` of a single-path
space: ``active`` holds one choice index per decision, the index ``value - low`` for an ``Integer`` decision
(as ``Strategy.one_hot_sample`` writes it), and the network maps it back to the value. Channel counts and
kernels are slices of shared weights, not ops mixed by a gate, so a gate can only be one-hot (value 1, ignored)
and no gate gradient exists: search this space with loss-ranking strategies (asng, sng, random).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Architecture, Categorical, Integer, SearchSpace

LEVEL_BACK = 5
KERNELS = (1, 3, 5)         # Int kernel index 1, 2, 3 -> k = 2·index - 1
IMAGE_CHANNELS = 3
CAT_OPS = tuple(f"{'skip' if s else 'noskip'}_k{k}" for s in (0, 1) for k in KERNELS)


@dataclass(frozen=True)
class Layer:
    """One decoded encoder node."""

    source: int   # node index read (0 = image)
    skip: bool
    kernel: int
    channels: int


class InpaintingSpace(SearchSpace):
    name = "inpainting"

    def __init__(self, encoding: str = "int", layers: int = 4, channel_scale: float = 1.0):
        if encoding not in ("int", "cat"):
            raise UserError(f"inpainting: encoding must be 'int' or 'cat', got {encoding!r}")
        if layers < 2:
            raise UserError(f"inpainting: layers must be at least 2, got {layers}")
        low, mid, high = (max(1, round(c * channel_scale)) for c in (64, 128, 256))
        if high <= low:
            raise UserError(f"inpainting: channel_scale {channel_scale} leaves no channel range; use >= 1/64")
        self.encoding, self.layers, self.channel_scale = encoding, layers, channel_scale
        self.channel_range, self.channel_levels = (low, high), (low, mid, high)
        decisions = []
        for i in range(1, layers + 1):
            decisions.append(Categorical(f"in{i}", tuple(f"n{j}" for j in range(max(0, i - LEVEL_BACK), i))))
            if encoding == "int":
                decisions += [Categorical(f"skip{i}", ("0", "1")), Integer(f"kidx{i}", 1, 3),
                              Integer(f"ch{i}", low, high)]
            else:
                decisions += [Categorical(f"op{i}", CAT_OPS),
                              Categorical(f"ch{i}", tuple(map(str, self.channel_levels)))]
        decisions.append(Categorical("out", tuple(f"n{j}" for j in range(max(1, layers + 1 - LEVEL_BACK), layers + 1))))
        super().__init__(decisions)
        self.max_channels = high

    # -- decoding ---------------------------------------------------------------------------------
    def decode(self, arch: Sequence[int]) -> tuple[list[Layer], int]:
        """(one Layer per encoder node 1..L, the output node)."""
        arch = self.check(arch)
        per = 4 if self.encoding == "int" else 3
        layers = []
        for i in range(1, self.layers + 1):
            v = arch[(i - 1) * per: i * per]
            source = max(0, i - LEVEL_BACK) + v[0]
            if self.encoding == "int":
                layers.append(Layer(source, bool(v[1]), 2 * v[2] - 1, v[3]))
            else:
                layers.append(Layer(source, v[1] >= len(KERNELS), KERNELS[v[1] % len(KERNELS)],
                                    self.channel_levels[v[2]]))
        out = max(1, self.layers + 1 - LEVEL_BACK) + arch[-1]
        return layers, out

    def active_path(self, arch: Sequence[int]) -> list[int]:
        """Encoder nodes the output depends on, input side first (e.g. [1, 3, 4])."""
        layers, node = self.decode(arch)
        path = []
        while node != 0:
            path.append(node)
            node = layers[node - 1].source
        return path[::-1]

    def describe(self, arch: Sequence[int]) -> str:
        """The active path, readable: ``1:k3c16s ->3:k5c8 -> out``."""
        layers, _ = self.decode(arch)
        return " -> ".join(f"{n}:k{layers[n - 1].kernel}c{layers[n - 1].channels}{'s' if layers[n - 1].skip else ''}"
                           for n in self.active_path(arch)) + " -> out"

    def from_string(self, text: str) -> Architecture:
        names = {d.name for d in self.decisions}
        for item in text.split(","):
            key = item.split("=", 1)[0].strip()
            if "=" not in item or key not in names:
                raise UserError(f"inpainting: {item!r} is not 'decision=value' for a decision of this space "
                                f"({self.encoding}, {self.layers} layers); expected e.g. "
                                f"{self.to_string(self.sample())!r}")
        return super().from_string(text)

    def _rebuild(self, decisions):
        raise UserError("inpainting: restricting this space is not supported")

    # -- networks ---------------------------------------------------------------------------------
    def baseline(self) -> Architecture:
        """Hand-designed CAE: a chain of all L layers, 3×3, the smallest channel count (64·s), skip everywhere."""
        arch = []
        for i in range(1, self.layers + 1):
            chain = min(i, LEVEL_BACK) - 1                       # the previous node
            if self.encoding == "int":
                arch += [chain, 1, 2, self.channel_range[0]]
            else:
                arch += [chain, CAT_OPS.index("skip_k3"), 0]
        arch.append(self.decisions[-1].size - 1)                 # out = node L
        return self.check(arch)

    def from_indices(self, active: Sequence[Sequence[int]]) -> Architecture:
        """The architecture of a single-path ``active`` (one index per decision; ``Integer``: value - low)."""
        if len(active) != len(self.decisions) or any(len(a) != 1 for a in active):
            raise UserError("inpainting: the supernet runs one architecture at a time; pass active = one index per "
                            "decision (Strategy.one_hot_sample); dense or multi-op mixtures are not supported")
        return tuple(int(a[0]) + (d.low if isinstance(d, Integer) else 0) for a, d in zip(active, self.decisions))

    def image_channels(self, input_shape, num_outputs) -> int:
        channels = IMAGE_CHANNELS if input_shape is None else int(input_shape[0])
        if input_shape is not None and len(input_shape) != 3:
            raise UserError(f"inpainting: the autoencoder reads C x H x W images, the task gives {tuple(input_shape)}")
        if num_outputs is not None and num_outputs != channels:
            raise UserError(f"inpainting: the autoencoder outputs its {channels} input channels, the task wants "
                            f"{num_outputs} outputs; use the inpainting task")
        return channels

    def build_supernet(self, input_shape: Sequence[int] | None = None, num_outputs: int | None = None,
                       **ignored) -> "CAESupernet":
        """``ignored``: the trainer's image-network settings (channels, cells...): the space fixes the sizes."""
        c, image = self.max_channels, self.image_channels(input_shape, num_outputs)
        enc = {i: (c, c if i > 1 else image, 5) for i in range(1, self.layers + 1)}
        return CAESupernet(self, enc)

    def build_child(self, arch: Sequence[int], input_shape: Sequence[int] | None = None,
                    num_outputs: int | None = None, **ignored) -> "CAEChild":
        layers, _ = self.decode(arch)
        image = self.image_channels(input_shape, num_outputs)
        width = lambda n: image if n == 0 else layers[n - 1].channels  # noqa: E731
        enc = {n: (layers[n - 1].channels, width(layers[n - 1].source), layers[n - 1].kernel)
               for n in self.active_path(arch)}
        return CAEChild(self, enc, self.check(arch))


class CAENetwork(nn.Module):
    """Holds, per encoder node n in ``shapes`` (c_out, c_in, k), an encoder conv weight (c_out, c_in, k, k) and
    a decoder transposed-conv weight (c_out, c_in, k, k) (PyTorch's (in, out) order), and runs an architecture
    on them (``run``). The supernet holds max shapes for all nodes; a child exact shapes for its path only."""

    def __init__(self, space: InpaintingSpace, shapes: dict[int, tuple[int, int, int]]):
        super().__init__()
        self.space = space
        self.enc_w, self.enc_b = nn.ParameterDict(), nn.ParameterDict()
        self.dec_w, self.dec_b = nn.ParameterDict(), nn.ParameterDict()
        for n, (c_out, c_in, k) in shapes.items():
            self.enc_w[str(n)], self.enc_b[str(n)] = _init(nn.Conv2d(c_in, c_out, k))
            self.dec_w[str(n)], self.dec_b[str(n)] = _init(nn.ConvTranspose2d(c_out, c_in, k))  # c_out -> c_in

    def run(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        layers, _ = self.space.decode(arch)
        path = self.space.active_path(arch)
        feats, inputs = {0: x}, {}
        for n in path:                                   # encoder along the active path
            layer = layers[n - 1]
            h = feats[layer.source]
            inputs[n] = h
            w = _crop(self.enc_w[str(n)][: layer.channels, : h.shape[1]], layer.kernel)
            feats[n] = F.relu(F.conv2d(h, w, self.enc_b[str(n)][: layer.channels], padding=layer.kernel // 2))
        h = feats[path[-1]]
        for j, n in enumerate(reversed(path)):           # mirrored decoder
            layer, c_in = layers[n - 1], inputs[n].shape[1]
            w = _crop(self.dec_w[str(n)][: layer.channels, :c_in], layer.kernel)
            h = F.conv_transpose2d(h, w, self.dec_b[str(n)][:c_in], padding=layer.kernel // 2)
            if layer.skip:
                h = h + inputs[n]
            if j < len(path) - 1:
                h = F.relu(h)
        return h


class CAESupernet(CAENetwork):
    """The weight-sharing supernet with the standard gated forward (single path)."""

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None,
                active: Sequence[Sequence[int]] | None = None, unit_gates: bool = False,
                inactive_grad: bool = False) -> torch.Tensor:
        if active is None:
            raise UserError("inpainting: the supernet needs an architecture: pass active = one index per decision")
        if gates is not None and gates.requires_grad:
            raise UserError("inpainting: the autoencoder has no gate gradients (sizes are weight slices); search "
                            "it with a loss-ranking strategy (asng, sng, random)")
        return self.run(x, self.space.from_indices(active))


class CAEChild(CAENetwork):
    """A stand-alone network of exact sizes: ``forward(x)``."""

    def __init__(self, space: InpaintingSpace, shapes: dict[int, tuple[int, int, int]], arch: Architecture):
        super().__init__(space, shapes)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.arch)


def _init(conv: nn.Module):
    """PyTorch's default init of the full-size layer, as plain parameters (sliced per architecture)."""
    return nn.Parameter(conv.weight.detach().clone()), nn.Parameter(conv.bias.detach().clone())


def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    """The central k×k of a (.., K, K) kernel (K odd, k ≤ K)."""
    off = (w.shape[-1] - k) // 2
    return w[..., off: off + k, off: off + k]
