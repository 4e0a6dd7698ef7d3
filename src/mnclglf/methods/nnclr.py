"""NNCLR (Dwibedi et al. 2021): the nearest neighbour in a support set is the positive.

Algorithm 1 of the paper, line for line: z = g(f(x)), p = h(z); ``NN1 = NN(z1, Q)``,
``NN2 = NN(z2, Q)`` (top-1 cosine neighbour, no gradient); ``loss = L(NN1, p2)/2 +
L(NN2, p1)/2`` where L is ``ops.infonce`` (``NN @ p.T / τ`` against labels 0..N−1);
after the optimiser step ``update_queue(Q, z1)`` (FIFO, in :meth:`after_step`).
"""

from __future__ import annotations

import torch

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput
from mnclglf.models.queue import Queue


class NNCLR(Method):
    name = "nnclr"
    n_views = 2

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=True)
        self.tau = cfg.nnclr.tau
        self.queue = Queue(cfg.nnclr.queue_size, cfg.model.proj_out, overflow="wrap")

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        assert self.predictor is not None
        z1, z2 = (self.project(x) for x in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            nn1, nn2 = ops.nearest_neighbour(self.queue.bank, z1), ops.nearest_neighbour(self.queue.bank, z2)
        l12, l21 = ops.infonce(nn1, p2, self.tau), ops.infonce(nn2, p1, self.tau)
        self.push_after_step(self.queue, z1)
        return StepOutput(l12 / 2 + l21 / 2, {"loss_12": l12.detach(), "loss_21": l21.detach()}, z1.detach())
