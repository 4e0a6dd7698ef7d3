"""SimSiam (Chen & He 2021): one encoder, a predictor, stop-gradient, no negatives.

Algorithm 1: ``L = D(p1, z2)/2 + D(p2, z1)/2`` with ``D(p, z) = −cos(p, stopgrad(z))``
(``ops.negative_cosine`` detaches z). Each view is encoded in its own forward pass, as
in SimSiam's code, so BatchNorm statistics are per view. SimSiam keeps the predictor's
lr fixed (Sec. 4.1); ``simsiam.fixed_predictor_lr`` marks its group ``fixed_lr``.
"""

from __future__ import annotations

import torch

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, D(p1, z2), D(p2, z1))`` of Algorithm 1; no gradient reaches z1 or z2 through D."""
    d12, d21 = ops.negative_cosine(p1, z2), ops.negative_cosine(p2, z1)
    return d12 / 2 + d21 / 2, d12, d21


class SimSiam(Method):
    name = "simsiam"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=True)

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        assert self.predictor is not None
        z1, z2 = (self.project(x) for x in views)
        loss, d12, d21 = simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2)
        return StepOutput(loss, {"loss_12": d12.detach(), "loss_21": d21.detach()}, z1.detach())

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        for group in groups:
            if group["name"] == "predictor":
                group["fixed_lr"] = self.cfg.simsiam.fixed_predictor_lr
        return groups
