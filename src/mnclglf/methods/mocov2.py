"""MoCo v2 (Chen, Fan, Girshick & He 2020): query encoder, momentum key encoder, a queue of keys.

MoCo's Algorithm 1 in its original, asymmetric form: q = g(f(x_q)) from view 1,
k = the key encoder's output on view 2 (no gradient, L2-normalised), loss
``ops.moco_infonce(q, k, queue, τ)`` (positive q·k, negatives q·queue, label 0).
After the optimiser step (:meth:`after_step`) the key encoder takes its momentum
update and the keys are enqueued, oldest first out. Doing both after the step is the
same as MoCo's order (update the key encoder, encode the keys, compute the loss,
enqueue): the key encoder's weights when encoding step t's keys are the same, and
the loss of step t sees the queue from before step t's keys in both.

**Shuffling BN on one device.** MoCo trains on 8 GPUs with per-GPU BatchNorm and
shuffles the key batch across GPUs so that a query and its positive key are
normalised with statistics of different sub-batches (otherwise BN leaks which sample
is the positive, Sec. 3.3). On one device shuffle-BN is a no-op, so this module does
what MoCo's own single-GPU CIFAR demo does (split BN with 8 splits, batch shuffled):
both encoders run on ``mocov2.bn_groups`` groups of the batch, each group with its own
BatchNorm statistics (the query encoder on consecutive groups, as the per-GPU
sub-batches); with ``mocov2.shuffle_bn`` the key encoder's groups are drawn from the
batch under a random permutation, and the inverse permutation restores the order of
the keys. ``shuffle_bn: false`` keeps the groups but not the shuffle (the leaking
per-GPU BN of MoCo's ablation); ``bn_groups: 1`` is one full-batch BN for both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.errors import UserError
from mnclglf.methods.base import Method, StepOutput
from mnclglf.models.queue import Queue


def grouped_forward(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int,
                    perm: torch.Tensor | None = None) -> torch.Tensor:
    """``encoder`` on ``groups`` consecutive groups of ``x`` (BatchNorm statistics per group).

    With ``perm``, the groups are taken from ``x[perm]`` and the output rows are put
    back in ``x``'s order (MoCo's ``_batch_shuffle`` / ``_batch_unshuffle``).
    """
    if perm is None:
        return torch.cat([encoder(part) for part in x.chunk(groups)])
    out = torch.cat([encoder(part) for part in x[perm].chunk(groups)])
    return out[torch.argsort(perm)]


class MoCoV2(Method):
    name = "mocov2"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=False)
        self.mc = cfg.mocov2
        bs, groups = cfg.pretrain.batch_size, self.mc.bn_groups
        if groups > 1 and (bs % groups or bs // groups < 2):
            raise UserError(f"mocov2.bn_groups = {groups}: pretrain.batch_size ({bs}) must split into "
                            f"{groups} equal groups of at least 2")
        self.key_encoder = self.momentum_copy(self.backbone, self.projector)
        self.queue = Queue(self.mc.queue_size, cfg.model.proj_out, overflow="wrap")

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        x_q, x_k = views
        groups = self.mc.bn_groups
        q = grouped_forward(self.project, x_q, groups)
        with torch.no_grad():
            perm = torch.randperm(x_k.shape[0], generator=gen, device=gen.device) if self.mc.shuffle_bn else None
            k = F.normalize(grouped_forward(self.key_encoder, x_k, groups, perm), dim=1)
        loss = ops.moco_infonce(q, k, self.queue.bank, self.mc.tau)
        self.push_after_step(self.queue, k)
        return StepOutput(loss, {}, q.detach())

    def after_step(self) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys (dequeue the oldest)."""
        self.ema_update(self.mc.ema)
        super().after_step()
