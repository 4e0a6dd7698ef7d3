"""MNCLGLF (Li, Long & Li): three networks, global and local features, Algorithm 1.

* back-propagation network f_o = backbone + projector + predictor, on x1, x2, x3;
* momentum network f_m = EMA copy of backbone + projector, on x1 and x2, each output
  replaced by its top-1 cosine nearest neighbour in the queue Q;
* stop-gradient network f_s with θ_s = θ_o at every step: rather than copying the
  weights, the pass runs f_o's own modules under ``no_grad``, which is θ_s = θ_o by
  construction. It encodes the 2×2 patches of x1 and x3, averages every k-subset of
  the 4 patch features and projects them.

Choices the paper leaves open are parameters of ``MnclglfConfig`` and are written up
in docs/FIDELITY.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.methods.base import Method, StepOutput
from mnclglf.models.queue import Queue


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module, frozen: bool) -> Iterator[None]:
    """While active (and ``frozen``), BatchNorm layers normalise as usual but leave running stats alone."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if frozen else []
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum


@contextlib.contextmanager
def bn_eval(module: nn.Module, use_running: bool) -> Iterator[None]:
    """While active (and ``use_running``), BatchNorm layers normalise with their running statistics."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if use_running else []
    modes = [bn.training for bn in bns]
    for bn in bns:
        bn.train(False)
    try:
        yield
    finally:
        for bn, mode in zip(bns, modes):
            bn.train(mode)


class MNCLGLF(Method):
    name = "mnclglf"
    n_views = 3

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, projector=True, predictor=True)
        self.mc = cfg.mnclglf
        self.momentum = self.momentum_copy(self.backbone, self.projector)
        self.queue = Queue(self.mc.queue_size, cfg.model.proj_out, overflow="wrap")
        self._pending: torch.Tensor | None = None

    @torch.no_grad()
    def local_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The stop-gradient network: divide, encode, combine, project (f_s = f_o's modules, no gradient)."""
        mc = self.mc
        with bn_stats_frozen(self, mc.sg_bn_stats == "frozen"), bn_eval(self, mc.sg_bn_batch == "running"):
            patches = ops.divide(x, mc.grid)
            v = ops.combine(self.backbone(patches), mc.k, parts=mc.grid * mc.grid)
            assert self.projector is not None
            return self.projector(v)

    def pick_one(self, c: torch.Tensor, n: int, j: torch.Tensor) -> torch.Tensor:
        """Block ``j`` of the C(4,k) combined blocks (Table 5's "one embedding" ablation)."""
        return c.view(-1, n, c.shape[1])[j]

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        x1, x2, x3 = views
        mc, n = self.mc, x1.shape[0]
        assert self.predictor is not None
        e1 = self.project(x1)
        p1, p2, p3 = self.predictor(e1), self.predictor(self.project(x2)), self.predictor(self.project(x3))
        with torch.no_grad():
            m1, m2 = self.momentum(x1), self.momentum(x2)
            z1 = ops.nearest_neighbour(self.queue.bank, m1)
            z2 = ops.nearest_neighbour(self.queue.bank, m2)
        c1, c3 = self.local_embeddings(x1), self.local_embeddings(x3)
        if mc.combined_positive == "one":
            j = torch.randint(ops.n_combinations(mc.grid * mc.grid, mc.k), (), generator=gen, device=gen.device)
            c1, c3 = self.pick_one(c1, n, j), self.pick_one(c3, n, j)
        total, loss_s, loss_m = ops.mnclglf_loss(c1, c3, p1, p2, p3, z1, z2, mc.tau, mc.lam)
        self._pending = z1 if mc.enqueue == "neighbour" else m1
        return StepOutput(total, {"loss_s": loss_s.detach(), "loss_m": loss_m.detach()}, e1.detach())

    def after_step(self) -> None:
        """EMA update of f_m, then ``update_queue(Q, z1)``; f_s needs no update (it is f_o)."""
        self.ema_update(self.mc.ema)
        if self._pending is not None:
            self.queue.push(self._pending)
            self._pending = None
