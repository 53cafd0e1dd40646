"""ABS's supernet training (Hu et al., ECCV 2020; spec abs.md): uniform single-path sampling, but as the official
NB201 code does it: every cell draws its own child at every step, and a node whose drawn inputs are all 'none' is
drawn again (``oneshot.abs_sampling``). There is nothing to learn; ABS scores the trained supernet afterwards
(``oneshot shrink``), and as a search the result is the best of ``candidates`` children on validation data.
"""

from __future__ import annotations

from ..abs_sampling import per_cell_active, sample_cells
from ..errors import UserError
from .base import Sample, Strategy, register


@register("abs_uniform", "ABS's supernet training: a uniform child per cell, no node fed by 'none' alone "
                         "(nb201; --hp cells = 3 x cells_per_stage)")
class ABSUniform(Strategy):
    name = "abs_uniform"
    updates_theta = False
    needs_gate_grad = False

    def __init__(self, space, cells: int = 15, candidates: int = 100, **kw):
        super().__init__(space, **kw)
        if cells < 1 or candidates < 1:
            raise UserError(f"abs_uniform: cells and candidates must be at least 1, got {cells}, {candidates}")
        sample_cells(space, 1)  # refuses spaces it cannot sample, now rather than at the first step
        self.cells = cells
        self.derive_by_validation = candidates

    def ask(self, phase: str) -> list[Sample]:
        archs = sample_cells(self.space, self.cells, self.generator)
        # no gates: each cell runs its own ops unscaled; ``arch`` (the first cell's) is only a record
        return [Sample(None, per_cell_active(self.space, archs), archs[0])]

    def derive(self):
        raise RuntimeError("abs_uniform derives by validation: the trainer ranks sampled children")
