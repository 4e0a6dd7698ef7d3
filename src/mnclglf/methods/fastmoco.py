"""Fast-MoCo (Ci, Lin, Sun, Chen, Ouyang & Tang 2022): combinatorial patches against an EMA target.

Each view is divided into grid×grid patches (``ops.divide``); the online backbone
encodes the 4N patches in one batch; every k-subset of a sample's 4 patch features is
averaged (``ops.combine``, C(4,2) = 6 combinations → 6N rows); the projector and
predictor map the combinations. The target encoder (EMA of backbone + projector, no
gradient, train-mode BN) encodes the full *other* view. The loss is
``(L(c1, t2) + L(c2, t1)) / 2`` with ``L = ops.infonce``: every combination of sample i
is contrasted against the N targets of the batch, label i, averaged over the
combinations — the released ``InfoNCE`` loss (sum over the 2·C(4,k) chunks / their count).
"""

from __future__ import annotations

import torch

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput


class FastMoCo(Method):
    name = "fastmoco"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=True)
        self.fc = cfg.fastmoco
        self.target = self.momentum_copy(self.backbone, self.projector)

    def combined(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections and predictions of the C(grid², k)·N combined patch features of ``x``."""
        assert self.projector is not None and self.predictor is not None
        grid = self.fc.grid
        v = ops.combine(self.backbone(ops.divide(x, grid)), self.fc.k, parts=grid * grid)
        z = self.projector(v)
        return z, self.predictor(z)

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        x1, x2 = views
        (z1, c1), (_, c2) = self.combined(x1), self.combined(x2)
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        l12, l21 = ops.infonce(c1, t2, self.fc.tau), ops.infonce(c2, t1, self.fc.tau)
        return StepOutput((l12 + l21) / 2, {"loss_12": l12.detach(), "loss_21": l21.detach()}, z1.detach())

    def after_step(self) -> None:
        self.ema_update(self.fc.ema)
