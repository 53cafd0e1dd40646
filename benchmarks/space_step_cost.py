"""Cost of a supernet step relative to the networks it stands for, on the DARTS CNN space and the PTB RNN space.

- one-hot ratio: a training step of the supernet with one-hot gates for a fixed architecture (gates multiplied
  in and dL/dgate computed, as in a sampling strategy's arch step) / the step of the stand-alone child holding
  the same weights. Goals: DARTS <= 1.10 (issue 14), RNN <= 1.15 (issue 15).
- weight-step ratio: the same with the active ops unscaled (no gates).
- dense ratio (DARTS): a step with softmax gates (every op but ``none`` on every edge, as DARTS and SNAS train)
  / the sum over ops of the step of the child that has that op on every edge.

- layout speedup (DARTS): the child's step and the dense supernet step in the default NCHW layout / in
  channels-last NHWC (``oneshot.supernet.use_channels_last``, which the darts presets switch on).
  ``--channels-last`` runs the ratios above in NHWC.

Steps are interleaved and the median taken (``step_cost.compare``); ``--clock cpu --threads 1`` times CPU
seconds, which a machine busy with other jobs disturbs far less than wall time.

    python benchmarks/space_step_cost.py --space darts --threads 1 --clock cpu --channels-last
    python benchmarks/space_step_cost.py --space rnn --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from step_cost import CLOCKS, compare, load_average, machine  # benchmarks/ is on sys.path when this runs

from oneshot.spaces import create_space
from oneshot.supernet import use_channels_last


def darts_setup(args):
    from oneshot.spaces.darts import child_from_supernet

    space = create_space("darts", cells=args.cells)
    arch = space.from_string("snas_moderate")
    supernet = space.build_supernet(channels=args.channels, cells=args.cells, drop_path=0.0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(10, (args.batch,))

    def loss(model, *gated):
        out = model(x, *gated)
        return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)  # the child returns (logits, aux)

    per_op = {}
    for name in space.decisions[0].choices:
        if name != "none":
            single = tuple(d.choices.index(name) for d in space.decisions)
            per_op[name] = child_from_supernet(space, supernet, single)
    return space, arch, supernet, child_from_supernet(space, supernet, arch), loss, per_op


def rnn_setup(args):
    from oneshot.spaces.rnn import child_from_supernet

    space = create_space("rnn")
    arch = space.from_string("|relu|relu,relu|relu,tanh,relu|")  # AdvantageNAS's PTB cell (spec §4)
    vocabulary = 10_000
    supernet = space.build_supernet(num_outputs=vocabulary, hidden=args.hidden)
    x = torch.randint(vocabulary, (args.bptt, args.batch))
    y = torch.randint(vocabulary, (args.bptt, args.batch))

    def loss(model, *gated):
        logits, _ = model(x, None, *gated)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / args.batch

    return space, arch, supernet, child_from_supernet(space, supernet, arch), loss, {}


def make_step(model, loss, gated=()):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        g = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in gated]
        value = loss(model, *g)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        value.item()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", choices=["darts", "rnn"], required=True)
    parser.add_argument("--channels", type=int, default=16, help="darts: the search supernet's C")
    parser.add_argument("--cells", type=int, default=8, help="darts: cells (the search supernet's 8)")
    parser.add_argument("--hidden", type=int, default=300, help="rnn: embedding and hidden size (the paper's 300)")
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--channels-last", action="store_true", help="darts: NHWC networks (as the darts presets)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space, arch, supernet, child, loss, per_op = (darts_setup if args.space == "darts" else rnn_setup)(args)
    softmax = torch.softmax(torch.randn(len(space), space.max_choices), -1)
    layouts = None
    if args.space == "darts":  # NCHW copies before any conversion, and their NHWC twins
        nchw = {"child": copy.deepcopy(child), "supernet_dense": copy.deepcopy(supernet)}
        nhwc = {name: use_channels_last(copy.deepcopy(model)) for name, model in nchw.items()}
        gated = {"child": (), "supernet_dense": (softmax, None)}
        layouts = compare({f"{name}_{layout}": make_step(models[name], loss, gated[name])
                           for name in nchw for layout, models in (("nchw", nchw), ("nhwc", nhwc))},
                          max(3, args.repeats // 3), 1, torch.device("cpu"), args.clock)
    if args.channels_last:
        for model in (supernet, child, *per_op.values()):
            use_channels_last(model)
    one_hot = torch.zeros(len(space), space.max_choices)
    one_hot[range(len(space)), list(arch)] = 1.0
    active = [[k] for k in arch]
    load = load_average()
    sparse = compare({"supernet_one_hot_gated": make_step(supernet, loss, (one_hot, active, True)),
                      "supernet_one_hot_unscaled": make_step(supernet, loss, (None, active)),
                      "child": make_step(child, loss)}, args.repeats, args.warmup, torch.device("cpu"), args.clock)
    result = {"machine": machine(), "space": args.space, "clock": args.clock, "batch": args.batch,
              "layout": "nhwc" if args.channels_last else "nchw",
              "architecture": space.to_string(arch), "load_before": load,
              "network": ({"channels": args.channels, "cells": args.cells} if args.space == "darts"
                          else {"hidden": args.hidden, "bptt": args.bptt, "vocabulary": 10_000}),
              "seconds": sparse,
              "one_hot_ratio": sparse["supernet_one_hot_gated"] / sparse["child"],
              "weight_step_ratio": sparse["supernet_one_hot_unscaled"] / sparse["child"]}
    if per_op:
        dense = compare({"supernet_dense": make_step(supernet, loss, (softmax, None)),
                         **{op: make_step(model, loss) for op, model in per_op.items()}},
                        max(3, args.repeats // 3), 1, torch.device("cpu"), args.clock)
        result["seconds"].update(dense)
        result["dense_ratio"] = dense["supernet_dense"] / sum(dense[op] for op in per_op)
    if layouts:
        result["seconds"].update(layouts)
        result["nhwc_speedup"] = {name: layouts[f"{name}_nchw"] / layouts[f"{name}_nhwc"]
                                  for name in ("child", "supernet_dense")}
    result["load_after"] = load_average()
    out = Path(args.out or f"benchmarks/results/space_step_cost_{args.space}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
