"""SimCLR (Chen et al. 2020): one encoder g(f(·)), NT-Xent over the 2N−2 in-batch negatives.

Both views go through the encoder as one batch of 2N images, as SimCLR's code does
(``tf.concat`` of the views before the network), so BatchNorm normalises over 2N.
Where Table 2's shared configuration replaces SimCLR's own settings is written up in
docs/FIDELITY.md.
"""

from __future__ import annotations

import torch

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput


class SimCLR(Method):
    name = "simclr"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=False)
        self.tau = cfg.simclr.tau

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        z1, z2 = self.project(torch.cat(views)).chunk(2)
        return StepOutput(ops.ntxent(z1, z2, self.tau), {}, z1.detach())
