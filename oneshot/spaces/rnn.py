"""The recurrent cell of the AdvantageNAS PTB search (spec advantagenas.md §3 "PTB RNN cell"), DARTS-style.

One time step, with h the previous hidden state and x the (dropped-out) word embedding:

- s0 = h + σ(c0)·(tanh(g0) − h), where [c0, g0] = x·W_x + h·W_h;
- node i (1..n) is the mean over j < i of the highway edge  s_j + σ(c_ij)·(op_ij(g_ij) − s_j),
  where [c_ij, g_ij] = s_j·W_ij (weights unshared between edges, no biases);
- the new hidden state is the mean of nodes 1..n. With n = 3 nodes that is 6 edges, one decision each.

The ops are activations applied to g_ij: identity, tanh, sigmoid, relu, none (zero, 'none' at index 4 as the
official ``zero_pos``). 'none' zeroes the activation only, so such an edge still passes (1 − σ(c_ij))·s_j; this
is the official Chainer code, and differs from DARTS, where 'none' drops the whole edge. The gate multiplies the
activation, as the official ``edge_act`` does, so dL/dgate is the inner product of dL/d(activation) with the
activation, summed over the time steps of the window (the gates are shared by all steps).

Around the cell (official ``RNNForLM``): embedding -> dropout 0.5 -> cell -> dropout 0.5 -> linear decoder with
bias (not tied); all parameters drawn from U(−0.1, 0.1); the state starts at zero (the official ``h = None``
gives the same s0). Sizes are options so that tests and the cpu preset can run small networks.

The weights of the edges leaving one node are one matrix, so a step costs one matmul per node rather than one
per edge. The supernet and a child differ only in the (parameter-free) activations each edge holds, so a
child takes the supernet's state dict as it is (``child_from_supernet``).

Architecture strings list each node's ops by input node, ``|relu|relu,relu|relu,tanh,relu|`` (node 1 from s0;
node 2 from s0, s1; node 3 from s0, s1, s2), the format of the official code's comments.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..supernet import MixedOp
from .base import Architecture, Categorical, SearchSpace

OPS_5 = ("identity", "tanh", "sigmoid", "relu", "none")
OPS_4 = OPS_5[:4]
INIT_RANGE = 0.1


def edge_list(nodes: int) -> list[tuple[int, int]]:
    """(target, source) per edge, node by node and by source: (1,0), (2,0), (2,1), (3,0), (3,1), (3,2)."""
    return [(i, j) for i in range(1, nodes + 1) for j in range(i)]


class RNNSpace(SearchSpace):
    name = "rnn"

    def __init__(self, nodes: int = 3, ops: Sequence[str] | int = OPS_5,
                 per_edge: Sequence[Sequence[str]] | None = None):
        if ops in (4, 5):
            ops = OPS_4 if ops == 4 else OPS_5
        elif isinstance(ops, int):
            raise UserError(f"rnn: ops must be 4 (without 'none') or 5 (with 'none'), got {ops}")
        if not isinstance(nodes, int) or not 1 <= nodes <= 8:
            raise UserError(f"rnn: nodes must be an integer from 1 to 8 (the spec uses 3), got {nodes!r}")
        self.nodes = nodes
        self.edges = edge_list(nodes)
        per_edge = per_edge or [ops] * len(self.edges)
        if len(per_edge) != len(self.edges):
            raise UserError(f"rnn: {nodes} nodes have {len(self.edges)} edges, got choices for {len(per_edge)}")
        for choices in per_edge:
            for op in choices:
                if op not in OPS_5:
                    raise UserError(f"rnn: unknown operation {op!r}; choose from {', '.join(OPS_5)}")
        super().__init__([Categorical(f"edge{i}{j}", tuple(c)) for (i, j), c in zip(self.edges, per_edge)])

    def _rebuild(self, decisions):
        return RNNSpace(self.nodes, per_edge=[d.choices for d in decisions])

    # -- networks ---------------------------------------------------------------------------------
    def build_supernet(self, input_shape: Sequence[int] = (), num_outputs: int | None = None,
                       **options) -> "RNNModel":
        """``options``: hidden (300), embedding (= hidden), dropout_input, dropout_output (0.5 each)."""
        vocabulary, options = _network_options(input_shape, num_outputs, options)
        return RNNModel([d.choices for d in self.decisions], vocabulary, nodes=self.nodes, **options)

    def build_child(self, arch: Sequence[int], input_shape: Sequence[int] = (), num_outputs: int | None = None,
                    **options) -> "RNNModel":
        vocabulary, options = _network_options(input_shape, num_outputs, options)
        return RNNModel([[op] for op in self.op_names(arch)], vocabulary, nodes=self.nodes, **options)

    # -- strings ----------------------------------------------------------------------------------
    def op_names(self, arch: Sequence[int]) -> list[str]:
        return [d.choices[v] for d, v in zip(self.decisions, self.check(arch))]

    def to_string(self, arch: Sequence[int]) -> str:
        names = self.op_names(arch)
        groups = [",".join(n for n, (i, _) in zip(names, self.edges) if i == node)
                  for node in range(1, self.nodes + 1)]
        return "|" + "|".join(groups) + "|"

    def example(self) -> str:
        return self.to_string([0] * len(self.decisions))

    def from_string(self, text: str) -> Architecture:
        text = "".join(str(text).split())  # spaces carry no meaning
        groups = text[1:-1].split("|") if len(text) >= 2 and text[0] == text[-1] == "|" else []
        if len(groups) != self.nodes:
            raise UserError(f"rnn: {text!r} is not a {self.nodes}-node cell string; expected "
                            f"'|op|op,op|...|' with node i listing its {self.nodes} input ops, e.g. {self.example()}")
        arch = []
        for node, group in enumerate(groups, start=1):
            ops = group.split(",")
            if len(ops) != node:
                raise UserError(f"rnn: node {node} of {text!r} needs {node} ops (one per input s0..s{node - 1}), "
                                f"got {len(ops)}; e.g. {self.example()}")
            for source, op in enumerate(ops):
                decision = self.decisions[self.edges.index((node, source))]
                if op not in decision.choices:
                    raise UserError(f"rnn: {op!r} (node {node}, input s{source}) is not a choice; "
                                    f"choose from {', '.join(decision.choices)}")
                arch.append(decision.choices.index(op))
        return tuple(arch)  # edge_list runs node by node, input by input: the order just parsed


NETWORK_OPTIONS = ("hidden", "embedding", "dropout_input", "dropout_output")
# image-network settings the trainer passes to every space: they mean nothing to a recurrent cell
FOREIGN_OPTIONS = ("channels", "cells_per_stage", "op_style", "op_bn_affine", "cells", "drop_path", "auxiliary",
                   "pool_bn")


def _network_options(input_shape: Sequence[int], num_outputs: int | None, options: dict) -> tuple[int, dict]:
    """(vocabulary size, RNNModel options); refuses image tasks and misspelt options."""
    options = dict(options)
    num_outputs = options.pop("num_classes", num_outputs)
    if tuple(input_shape) != ():
        raise UserError(f"rnn: the recurrent cell reads word ids (input shape ()), not {tuple(input_shape)}: "
                        "use it with a language-model task such as ptb")
    if not isinstance(num_outputs, int) or num_outputs < 2:
        raise UserError(f"rnn: num_outputs must be the vocabulary size (at least 2), got {num_outputs!r}")
    unknown = sorted(set(options) - set(NETWORK_OPTIONS) - set(FOREIGN_OPTIONS))
    if unknown:
        raise UserError(f"rnn: unknown network option(s) {', '.join(unknown)}; use {', '.join(NETWORK_OPTIONS)}")
    return num_outputs, {k: v for k, v in options.items() if k in NETWORK_OPTIONS}


# --- operations --------------------------------------------------------------------------------------
class Zero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


ACTIVATIONS = {"identity": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "none": Zero}


# --- network -----------------------------------------------------------------------------------------
class RNNCell(nn.Module):
    """Runs the cell over a window. ``edge_ops[e]`` lists the activations held by edge e (all of the space's
    choices in a supernet, one in a child); the gates and ``active`` have ``MixedOp``'s meaning."""

    def __init__(self, edge_ops: Sequence[Sequence[str]], nodes: int, input_size: int, hidden: int):
        super().__init__()
        self.nodes, self.hidden = nodes, hidden
        self.edge_index = {edge: e for e, edge in enumerate(edge_list(nodes))}
        self.x_weight = nn.Parameter(torch.empty(input_size, 2 * hidden))
        self.h_weight = nn.Parameter(torch.empty(hidden, 2 * hidden))
        # node j feeds nodes j+1..n: columns [2H*(i-j-1), 2H*(i-j)) of out_weight[j] belong to edge j->i
        self.out_weight = nn.ParameterList(nn.Parameter(torch.empty(hidden, 2 * hidden * (nodes - j)))
                                           for j in range(nodes))
        self.mixed = nn.ModuleList(MixedOp([ACTIVATIONS[op]() for op in ops]) for ops in edge_ops)

    def forward(self, x, h, gates=None, active=None, unit_gates=False, inactive_grad=False):
        """x: (T, B, input_size) embedded inputs; h: (B, hidden). Returns outputs (T, B, hidden), last state."""
        x_proj = x @ self.x_weight  # all steps in one matmul
        outputs = []
        for t in range(len(x)):
            c0, g0 = (x_proj[t] + h @ self.h_weight).chunk(2, -1)
            states = [h + torch.sigmoid(c0) * (torch.tanh(g0) - h)]
            projections = []
            for i in range(1, self.nodes + 1):
                projections.append((states[i - 1] @ self.out_weight[i - 1]).chunk(self.nodes - i + 1, -1))
                total = None
                for j in range(i):
                    e = self.edge_index[i, j]
                    c, g = projections[j][i - j - 1].chunk(2, -1)
                    act = self.mixed[e](g, None if gates is None else gates[e],
                                        None if active is None else active[e], unit_gates, inactive_grad)
                    s = states[j] + torch.sigmoid(c) * (act - states[j])
                    total = s if total is None else total + s
                states.append(total / i)
            h = torch.stack(states[1:]).mean(0)
            outputs.append(h)
        return torch.stack(outputs), h


class RNNModel(nn.Module):
    """Embedding -> dropout -> cell -> dropout -> decoder. ``forward(x, hidden)`` with x (T, B) word ids and
    hidden (B, hidden) or None (a reset state) returns (logits (T, B, vocabulary), new hidden)."""

    def __init__(self, edge_ops: Sequence[Sequence[str]], vocabulary: int, nodes: int = 3, hidden: int = 300,
                 embedding: int | None = None, dropout_input: float = 0.5, dropout_output: float = 0.5):
        super().__init__()
        embedding = embedding or hidden
        for name, size in (("hidden", hidden), ("embedding", embedding)):
            if not isinstance(size, int) or size < 1:
                raise UserError(f"rnn: {name} must be a positive integer, got {size!r}")
        for name, p in (("dropout_input", dropout_input), ("dropout_output", dropout_output)):
            if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise UserError(f"rnn: {name} must be in [0, 1), got {p}")
        self.config = dict(nodes=nodes, hidden=hidden, embedding=embedding, dropout_input=dropout_input,
                           dropout_output=dropout_output)
        self.edge_ops = [list(ops) for ops in edge_ops]
        self.embed = nn.Embedding(vocabulary, embedding)
        self.cell = RNNCell(edge_ops, nodes, embedding, hidden)
        self.decoder = nn.Linear(hidden, vocabulary)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-INIT_RANGE, INIT_RANGE)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.decoder.weight.new_zeros(batch_size, self.config["hidden"])

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None, gates: torch.Tensor | None = None,
                active: Sequence[Sequence[int]] | None = None, unit_gates: bool = False,
                inactive_grad: bool = False):
        if hidden is None:
            hidden = self.init_hidden(x.shape[1])
        e = F.dropout(self.embed(x), self.config["dropout_input"], self.training)
        out, hidden = self.cell(e, hidden, gates, active, unit_gates, inactive_grad)
        out = F.dropout(out, self.config["dropout_output"], self.training)
        return self.decoder(out), hidden


def child_from_supernet(space: RNNSpace, supernet: RNNModel, arch: Sequence[int]) -> RNNModel:
    """A stand-alone child with the supernet's weights: the ops are parameter-free, so every weight is shared."""
    options = {k: v for k, v in supernet.config.items() if k != "nodes"}
    child = space.build_child(arch, num_outputs=supernet.decoder.out_features, **options)
    child.to(supernet.decoder.weight.device).load_state_dict(supernet.state_dict())
    return child
