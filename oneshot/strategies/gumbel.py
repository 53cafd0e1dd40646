"""Gumbel noise as the AdvantageNAS code draws it, shared by GDAS, ProxylessNAS, NASP (warm-up) and SNAS."""

from __future__ import annotations

import torch

SMOOTHING = 0.001  # the official code takes log(p + 0.001): a floor on every op's chance
CLIP = 0.001       # ... and clips the uniforms behind the Gumbel noise to [0.001, 0.999]


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """-log(-log(u)), u ~ U[0.001, 0.999] (the official clipping), drawn on the host."""
    u = torch.rand(shape, generator=generator).clamp(CLIP, 1 - CLIP)
    return -torch.log(-torch.log(u))


def perturbed_scores(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log(softmax(logits) + 0.001) + G; choices masked out of the logits (-inf) stay at -inf."""
    probs = torch.softmax(logits, -1)
    return torch.log(probs + SMOOTHING).masked_fill(torch.isinf(logits), -torch.inf) + noise


def relaxed_sample(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """The Gumbel-softmax z = softmax((log(p + 0.001) + G) / τ), differentiable in the logits."""
    return torch.softmax(perturbed_scores(logits, noise) / tau, -1)
