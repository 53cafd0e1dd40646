"""DARTS (Liu et al., ICLR 2019): first order as the AdvantageNAS code runs it (spec advantagenas.md §2), second
order (``--hp order=2``) as DARTS's own code does.

a = softmax(θ); every op runs, mixed by a (dense propagation), in weight steps (warm-up included) and arch steps
alike. Arch steps take dL/da on a validation batch and pull it back through the softmax by autograd. Nothing is
random, so the generator is never used.

``order=1`` (default): dL_val(w, a)/da, no unrolled term (bit-identical to the code before ``order`` existed).
``order=2``: the strategy declares ``arch_gradient = "unrolled"`` and the trainer hands ``tell`` the gate gradient
of ``oneshot.unrolled``: dL_val(w', a)/da at the virtual step w' = w − ξ(μ·buffer + g + wd·w) of the trainer's
weight optimiser, its Hessian term by a central finite difference.

Checked against quark0/darts at its last change of the architect (a00cad0, "better hessian-vector
multiplication"; the first release perturbed w' and added wd·w' to the direction, the later code does neither):
cnn/architect.py and cnn/train_search.py, rnn/architect.py and rnn/train_search.py. As there:
- ξ is the lr of the weight step that follows (CNN: the epoch's ``scheduler.get_lr()``); the momentum buffer times
  μ enters the virtual step, 0 before the first weight step; weight decay enters as in the optimiser;
- the virtual step trains on the training batch of the weight step that follows;
- v = ∇w' L_val(w', a) (no weight decay); R = 0.01 / ‖v‖ over all weights; w± = w ± R·v around w, not w';
  the result is ∇a L_val(w', a) − ξ·(∇a L_train(w+, a) − ∇a L_train(w−, a)) / 2R;
- ``virtual_clip=True`` (default): the virtual step clips its gradient as the weight step does and the Hessian term
  is multiplied by the clipping factor κ, held constant (rnn/architect.py: ``eta * clip_coef``; needed at the PTB
  lr of 20, where an unclipped virtual step diverges at once); ``virtual_clip=False``: no clipping
  (cnn/architect.py, whose weight step clips at 5 all the same). Our trainer clips g + wd·w together; DARTS's
  RNN code clips g and then adds wd·w.
Differences, on purpose:
- with Nesterov momentum (``w_nesterov``; DARTS uses plain momentum) w' is Nesterov's step,
  w − ξ((1+μ)κ(g + wd·w) + μ²·buffer), and the Hessian term gets the factor 1 + μ, the step's derivative in g;
- the gradient is taken to the gates a and pulled back through the softmax in ``tell`` (DARTS differentiates θ
  directly: the same chain rule);
- w is restored bit-exactly (DARTS adds and subtracts R·v, which rounds);
- the training passes replay one stream of random numbers (drop-path masks agree in g, w+ and w−) and leave BN
  running statistics alone; these move once, in the validation pass at w' (DARTS's three training passes move
  them, its validation pass on a copy does not);
- the arch-step loss logged is L_val(w', a); one process only (micro-batches work).

Derivation (``derive``): ``top2`` is DARTS's genotype rule (per node the two incoming edges whose strongest
non-``none`` op weighs most, with that op; cnn/model_search.py ``genotype``), ``argmax`` the op of largest weight
on every edge (the AdvantageNAS code's rule on NB201, ``none`` included). ``auto`` (default): ``top2`` on a space
that has the rule and ``none`` on every edge (the DARTS CNN space), ``argmax`` elsewhere.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import Sample, ThetaStrategy, register


@register("darts", "DARTS: softmax-mixed dense supernet, gradient of the val loss to θ, first order or (order=2) "
                   "unrolled second order (Liu et al. 2019)")
class DARTS(ThetaStrategy):
    name = "darts"
    arch_gradient = "direct"  # "unrolled" with order=2 (read by the trainer)
    unrolled_clip = True      # the virtual step clips as the weight step does (``virtual_clip``)

    def __init__(self, space, seed: int = 0, device="cpu", lr: float | None = 3e-4, order: int = 1,
                 virtual_clip: bool = True, derive: str = "auto", **theta_options):
        """``order``: 1, the gradient at the current weights; 2, DARTS's unrolled gradient. ``virtual_clip``
        (order 2): the virtual step clips its gradient as the weight step does (DARTS's RNN code) or not (CNN).
        ``derive``: auto, top2 or argmax (module docstring)."""
        if order not in (1, 2):
            raise UserError(f"strategy 'darts': --hp order must be 1 (first order) or 2 (unrolled), got {order}")
        top2_possible = hasattr(space, "derive_top2") and all("none" in d.choices for d in space.decisions)
        if derive not in ("auto", "top2", "argmax"):
            raise UserError(f"strategy 'darts': --hp derive must be auto, top2 or argmax, got {derive!r}")
        if derive == "top2" and not top2_possible:
            raise UserError(f"strategy 'darts': the {space.name} space has no top-2 rule here (it needs 'none' on "
                            "every edge); use --hp derive=argmax")
        self.top2 = derive == "top2" or (derive == "auto" and top2_possible)
        super().__init__(space, seed, device, lr, **theta_options)
        self.order = order
        self.arch_gradient = "unrolled" if order == 2 else "direct"
        self.unrolled_clip = bool(virtual_clip)

    def ask(self, phase: str) -> list[Sample]:
        gates = self.probabilities()
        return [Sample(gates, None, tuple(gates.argmax(-1).tolist()))]

    def derive(self):
        if self.top2:
            return self.space.derive_top2(self.logits().detach())
        return super().derive()

    def tell(self, samples, losses, gate_grads, phase):
        if phase != "arch":
            return
        for gate_grad in gate_grads:
            # θ has not moved since ask, so softmax(θ) rebuilt here is the gate the trainer differentiated
            (grad,) = torch.autograd.grad(torch.softmax(self.logits(), -1), self.theta, gate_grad.to(self.device))
            self.apply_gradient(grad)
