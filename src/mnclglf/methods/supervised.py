"""The supervised baseline: the same ResNet-18 and a linear classifier, trained with cross-entropy.

One crop + flip view per step (``uses_labels`` makes the loop use ``CropFlipAugment``),
no projector. The head travels in the checkpoint with the backbone;
``mnclglf.train.supervised`` evaluates both on the test split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput


class Supervised(Method):
    name = "supervised"
    n_views = 1
    uses_labels = True

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=False, predictor=False)
        self.head = nn.Linear(self.backbone.out_dim, num_classes)

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        assert labels is not None, "the supervised baseline needs labels"
        h = self.backbone(views[0])
        logits = self.head(h)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.supervised.label_smoothing)
        top1 = (logits.argmax(1) == labels).float().mean() * 100
        return StepOutput(loss, {"train_top1": top1.detach()}, h.detach())
