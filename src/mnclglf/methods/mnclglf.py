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

The ``released`` variant (the run ``mnclglf-released``) is the same class with other
values of those parameters, one per difference of the authors' released code
(docs/FIDELITY.md, ``mnclglf fidelity``): the stop-gradient network divides x1 and x2,
the momentum network encodes x1 and x3 and only x3's batch is enqueued (tail-drop);
column-major patches; loss_s on detached predictions with the predictions in the rows;
loss_m = NT-Xent; the EMA update at the start of the step. With every parameter at its
released value the loss is :func:`mnclglf.ops.released_loss`.
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

VIEW = {"x1": 0, "x2": 1, "x3": 2}


def view_pair(spec: str) -> tuple[int, int]:
    """``"x1x3"`` → (0, 2): the indices of a pair of views."""
    return VIEW[spec[:2]], VIEW[spec[2:]]


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
        self.queue = Queue(self.mc.queue_size, cfg.model.proj_out, overflow=self.mc.queue_overflow)

    def divide(self, x: torch.Tensor) -> torch.Tensor:
        """The 2×2 split, patch-major; patches row-major (``ops.divide``) or column-major (the released split)."""
        grid = self.mc.grid
        if self.mc.patch_order == "column":
            return ops.divide(x.transpose(2, 3), grid).transpose(2, 3).contiguous()
        return ops.divide(x, grid)

    @torch.no_grad()
    def local_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The stop-gradient network: divide, encode, combine, project (f_s = f_o's modules, no gradient)."""
        mc = self.mc
        with bn_stats_frozen(self, mc.sg_bn_stats == "frozen"), bn_eval(self, mc.sg_bn_batch == "running"):
            v = ops.combine(self.backbone(self.divide(x)), mc.k, parts=mc.grid * mc.grid)
            assert self.projector is not None
            return self.projector(v)

    def pick_one(self, c: torch.Tensor, n: int, j: torch.Tensor) -> torch.Tensor:
        """Block ``j`` (0-dim, on the device) of the C(4,k) combined blocks (Table 5's ablation).

        ``index_select``, not ``[j]``: indexing with a 0-dim tensor reads it back to the host.
        """
        return c.view(-1, n, c.shape[1]).index_select(0, j.reshape(1)).squeeze(0)

    def loss_s_term(self, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """One term of loss_s: the combined embeddings ``c`` of one view against the prediction ``p`` of the other."""
        mc = self.mc
        if not mc.loss_s_grad:
            p = p.detach()
        return ops.infonce(c, p, mc.tau) if mc.loss_s_rows == "target" else ops.infonce_pk(p, c, mc.tau)

    def loss_m_term(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """One term of loss_m: the neighbour ``z`` of one momentum view against the prediction ``p`` of the other."""
        mc = self.mc
        return ops.infonce(z, p, mc.tau) if mc.loss_m == "infonce" else ops.ntxent(z, p, mc.tau)

    def losses(self, views: list[torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The forward passes and ``loss_total``, ``loss_s``, ``loss_m`` (not detached) and the collapse embedding.

        Algorithm 1 with the views and terms the parameters pick: loss_s pairs the combined
        embeddings of each stop-gradient view with the prediction of the other one, loss_m
        the neighbour of each momentum view with the prediction of the other one.
        """
        mc, n = self.mc, views[0].shape[0]
        assert self.predictor is not None
        if mc.ema_timing == "before_targets":  # the released code: EMA first, then the targets
            self.ema_update(mc.ema)
        e = [self.project(x) for x in views]
        p = [self.predictor(z) for z in e]
        a, b = view_pair(mc.momentum_views)
        with torch.no_grad():
            m = {i: self.momentum(views[i]) for i in (a, b)}
            z = {i: ops.nearest_neighbour(self.queue.bank, m[i]) for i in (a, b)}  # both before any enqueue
        s, t = view_pair(mc.sg_views)
        c = {i: self.local_embeddings(views[i]) for i in (s, t)}
        if mc.combined_positive == "one":
            j = torch.randint(ops.n_combinations(mc.grid * mc.grid, mc.k), (), generator=gen, device=gen.device)
            c = {i: self.pick_one(ci, n, j) for i, ci in c.items()}
        loss_s = (self.loss_s_term(c[s], p[t]) + self.loss_s_term(c[t], p[s])) / 2
        loss_m = (self.loss_m_term(z[a], p[b]) + self.loss_m_term(z[b], p[a])) / 2
        q = VIEW[mc.enqueue_view]
        self.push_after_step(self.queue, z[q] if mc.enqueue == "neighbour" else m[q])  # update_queue(Q, ·)
        return {"loss": loss_s + mc.lam * loss_m, "loss_s": loss_s, "loss_m": loss_m, "embedding": e[0]}

    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        out = self.losses(views, gen)
        return StepOutput(out["loss"], {"loss_s": out["loss_s"].detach(), "loss_m": out["loss_m"].detach()},
                          out["embedding"].detach())

    def after_step(self) -> None:
        """EMA update of f_m (unless done before the targets), then ``update_queue``; f_s is f_o."""
        if self.mc.ema_timing == "after_step":
            self.ema_update(self.mc.ema)
        super().after_step()
