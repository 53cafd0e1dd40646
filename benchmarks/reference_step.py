"""Speed of a dense DARTS-space supernet training step against the official DARTS code (quark0/darts), as ratios.

Kinds, each a full weight-training step (forward with the same softmax mixture weights, cross-entropy, backward,
SGD step on the weights; the mixture weights get their gradient too, as in DARTS's own weight step):

- ``reference_dense``: ``cnn/model_search.py``'s ``Network`` of the checkout given by ``--reference`` (NCHW, as
  the official code runs), its ``alphas_normal`` / ``alphas_reduce`` set to rows 0-13 / 14-27 of α;
- ``ours_dense_nchw``: ``create_space("darts").build_supernet`` in the default layout, gates = softmax(α);
- ``ours_dense_nhwc``: the same after ``oneshot.supernet.use_channels_last`` (as the darts presets run it).

Ratios: ours_nchw / reference and ours_nhwc / reference (below 1: ours is faster). Steps are interleaved and the
median taken (``step_cost.compare``). Before timing, the networks' weight-parameter counts and output shapes are
compared (and, when the parameter tensors pair up one to one, the logits with copied weights), and reported.

The official code is imported from ``--reference DIR/cnn`` at run time and never copied here. Shims, applied
only while it runs in this process: on a CPU device ``torch.Tensor.cuda`` returns the tensor itself while its
``Network`` is built (``_initialize_alphas`` calls ``.cuda()``); nothing else is needed with torch 2.x
(``torch.autograd.Variable`` still exists and yields a plain leaf tensor).

    git --git-dir=/work/.mirror/quark0+darts/repo/.git archive HEAD cnn | tar -x -C /tmp/darts-ref
    python benchmarks/reference_step.py --reference /tmp/darts-ref --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from step_cost import CLOCKS, compare, load_average, machine  # benchmarks/ is on sys.path when this runs

from oneshot.spaces import create_space
from oneshot.supernet import use_channels_last
from oneshot.trainer import resolve_device


@contextlib.contextmanager
def cuda_is_identity(device):
    """On CPU, let the official code's ``.cuda()`` calls return the tensor unchanged (restored on exit)."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def reference_network(directory: str, channels: int, cells: int, alpha, device):
    sys.path.insert(0, str(Path(directory, "cnn").resolve()))  # it imports ``operations``, ``genotypes`` flat
    # modules of the user's checkout, not dependencies of this project: imported by name at run time
    PRIMITIVES = importlib.import_module("genotypes").PRIMITIVES
    Network = importlib.import_module("model_search").Network

    with cuda_is_identity(device):
        net = Network(channels, 10, cells, torch.nn.CrossEntropyLoss()).to(device)
    with torch.no_grad():  # softmax(alphas) must equal our gates: same α, same rows
        net.alphas_normal.copy_(alpha[:14])
        net.alphas_reduce.copy_(alpha[14:])
    return net, list(PRIMITIVES)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # DARTS keeps its alphas out of parameters(), as we do


def make_step(model, x, y, gates=None):
    # DARTS's search settings for the weights (train_search.py), the same for every kind
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    alphas = getattr(model, "_arch_parameters", [])

    def step():
        if gates is None:  # the reference: softmax of its alphas, computed in its forward
            out = model(x)
        else:  # ours: the gates are a leaf needing grad, as the alphas are there
            out = model(x, gates.detach().clone().requires_grad_())
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        optimizer.zero_grad(set_to_none=True)
        for a in alphas:
            a.grad = None
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def logits_difference(reference, ours, x, gates):
    """max |Δlogits| of ``ours`` holding ``reference``'s weights, or None if the parameters do not pair up."""
    mine = copy.deepcopy(ours)
    pairs = list(zip(reference.parameters(), mine.parameters()))
    if count(reference) != count(mine) or any(a.shape != b.shape for a, b in pairs):
        return None
    with torch.no_grad():
        for a, b in pairs:
            b.copy_(a)
        out = mine(x, gates)
        return (reference(x) - (out[0] if isinstance(out, tuple) else out)).abs().max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a quark0/darts checkout (the folder holding cnn/)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=16, help="the search network's C")
    parser.add_argument("--cells", type=int, default=8, help="the search network's 8 cells")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--out", default="benchmarks/results/reference_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    alpha = torch.randn(28, 8, device=device)  # far from uniform, so the logits check tests the row/op order
    gates = torch.softmax(alpha, -1)
    reference, primitives = reference_network(args.reference, args.channels, args.cells, alpha, device)
    space = create_space("darts", cells=args.cells)
    if any(list(d.choices) != primitives for d in space.decisions):
        sys.exit(f"op order differs from DARTS's PRIMITIVES {primitives}")
    nchw = space.build_supernet(channels=args.channels, cells=args.cells, drop_path=0.0).to(device)
    nhwc = use_channels_last(copy.deepcopy(nchw))
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(10, (args.batch,), device=device)

    params = {"reference": count(reference), "ours": count(nchw)}
    print(f"weight parameters: reference {params['reference']}, ours {params['ours']}", flush=True)
    with torch.no_grad():
        out = nchw(x, gates)
        shapes = {"reference": list(reference(x).shape), "ours": list((out[0] if isinstance(out, tuple) else out).shape)}
    if shapes["reference"] != shapes["ours"]:
        sys.exit(f"output shapes differ: {shapes}")
    checks = {"parameters": params, "parameters_equal": params["reference"] == params["ours"],
              "output_shape": shapes["ours"],
              "max_abs_logit_difference_same_weights": logits_difference(reference, nchw, x, gates)}
    if not checks["parameters_equal"]:
        checks["note"] = "weight-parameter counts differ: the networks are not the same size; read ratios with care"
    print(json.dumps(checks), flush=True)

    load = load_average()
    seconds = compare({"reference_dense": make_step(reference, x, y),
                       "ours_dense_nchw": make_step(nchw, x, y, gates),
                       "ours_dense_nhwc": make_step(nhwc, x, y, gates)},
                      args.repeats, args.warmup, device, args.clock)
    result = {"machine": machine(),
              "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
              "clock": args.clock, "batch": args.batch, "repeats": args.repeats,
              "network": {"channels": args.channels, "cells": args.cells}, "reference": str(Path(args.reference)),
              "shims": ["torch.Tensor.cuda -> identity while the reference Network is built"]
              if device.type == "cpu" else [],
              "checks": checks, "load_before": load, "load_after": load_average(), "seconds": seconds,
              "ratios": {"ours_nchw/reference": seconds["ours_dense_nchw"] / seconds["reference_dense"],
                         "ours_nhwc/reference": seconds["ours_dense_nhwc"] / seconds["reference_dense"]}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
