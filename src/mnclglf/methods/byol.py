"""BYOL (Grill et al. 2020): online backbone + projector + predictor, EMA target of backbone + projector.

The loss is symmetric, ``ℓ(p1, t2) + ℓ(p2, t1)`` with ``ℓ = 2 − 2·cos`` (``ops.byol_loss``),
summed over the two directions as BYOL's L + L̃. The target runs under ``no_grad``
in train mode (batch statistics), each view in its own pass; its weights follow the
online network in :meth:`after_step` with the constant momentum ``byol.ema``.
"""

from __future__ import annotations

import torch

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput


class BYOL(Method):
    name = "byol"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=True)
        self.target = self.momentum_copy(self.backbone, self.projector)

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        assert self.predictor is not None
        x1, x2 = views
        z1 = self.project(x1)
        p1, p2 = self.predictor(z1), self.predictor(self.project(x2))
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
        l12, l21 = ops.byol_loss(p1, t2), ops.byol_loss(p2, t1)
        return StepOutput(l12 + l21, {"loss_12": l12.detach(), "loss_21": l21.detach()}, z1.detach())

    def after_step(self) -> None:
        self.ema_update(self.cfg.byol.ema)
