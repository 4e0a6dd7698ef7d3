"""A plain eager transcription of the paper's Algorithm 1, the baseline ``mnclglf bench`` times MNCLGLF against.

Written as a reader of the pseudocode would write it, with none of the package's
batching: three separate ``f_o`` calls, two ``f_m`` calls, the stop-gradient network run
as f_o's own encoder and projector under ``no_grad`` (θ_s = θ_o, no deepcopy), ``divide``
and ``combine`` as Python loops over patches and combinations, ``L(h, p)`` as a loop over
the chunks of ``h``, a naive FIFO queue (``cat`` of the kept rows and the new batch), a
parameter-by-parameter EMA and ``torch.optim.SGD``. It takes the modules of an
:class:`~mnclglf.methods.mnclglf.MNCLGLF` (so both run on the same weights and shapes) and
reads the paper variant's choices of ``MnclglfConfig`` (``enqueue``, ``sg_bn_stats``,
``sg_bn_batch``, ``lam``, ``tau``, ``ema``, ``k``, ``grid``); ``tests/test_bench.py`` checks
that its loss, gradients and updates equal the package's step.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from mnclglf.config import RunConfig
from mnclglf.errors import UserError
from mnclglf.train.schedule import cosine_lr

# The MnclglfConfig keys and values this transcription implements (Algorithm 1's reading).
PAPER_READING = {"variant": "paper", "combined_positive": "all", "sg_views": "x1x3", "momentum_views": "x1x2",
                 "enqueue_view": "x1", "queue_overflow": "wrap", "patch_order": "row", "loss_s_grad": True,
                 "loss_s_rows": "target", "loss_m": "infonce", "ema_timing": "after_step"}


def check_supported(cfg: RunConfig) -> None:
    """Raise :class:`UserError` unless ``cfg`` is a configuration this transcription reproduces."""
    mc = cfg.mnclglf
    for key, want in PAPER_READING.items():
        if hasattr(mc, key) and getattr(mc, key) != want:
            raise UserError(f"bench reference: Algorithm 1 is transcribed for mnclglf.{key} = {want!r}, "
                            f"not {getattr(mc, key)!r}")
    p = cfg.pretrain
    if getattr(p, "clip_grad_norm", 0.0) or getattr(p, "fixed_predictor_lr", False):
        raise UserError("bench reference: Algorithm 1 has no gradient clipping and no fixed predictor lr")


def NN(Q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the pseudocode's name
    """Top-1 cosine neighbour of each row of ``z`` in ``Q``, as the pseudocode returns it (normalised)."""
    Q, z = F.normalize(Q, dim=1), F.normalize(z, dim=1)
    sim = torch.mm(z, Q.t())
    index = sim.argmax(dim=1)
    return Q[index]


def L(h: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:  # noqa: N802 - the pseudocode's name
    h, p = F.normalize(h, dim=1), F.normalize(p, dim=1)
    chunks = h.split(p.shape[0])
    loss = 0.0
    for _h in chunks:
        logits = torch.mm(_h, p.t())
        labels = torch.arange(p.shape[0], device=p.device)
        loss = loss + F.cross_entropy(logits / tau, labels)
    return loss / len(chunks)


def divide(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch by patch, row-major; the patches of all images stacked patch-major (4N×C×H/2×W/2)."""
    _, _, h, w = x.shape
    ph, pw = h // grid, w // grid
    patches = []
    for i in range(grid):
        for j in range(grid):
            patches.append(x[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw])
    return torch.cat(patches)


def combine(vd: torch.Tensor, k: int, parts: int) -> torch.Tensor:
    """Every k-subset of the ``parts`` patch embeddings of an image, averaged, one combination at a time."""
    blocks = vd.split(vd.shape[0] // parts)
    out = []
    for combo in itertools.combinations(range(parts), k):
        acc = blocks[combo[0]]
        for c in combo[1:]:
            acc = acc + blocks[c]
        out.append(acc / k)
    return torch.cat(out)


class AlgorithmOne:
    """Algorithm 1, step by step, on the modules of an MNCLGLF method (its own weights are trained)."""

    def __init__(self, method: nn.Module, cfg: RunConfig) -> None:
        check_supported(cfg)
        self.cfg, self.mc = cfg, cfg.mnclglf
        self.encoder, self.projector, self.predictor = method.backbone, method.projector, method.predictor
        self.f_m = method.momentum  # Sequential(encoder copy, projector copy)
        self.Q = method.queue.bank.detach().clone()
        p = cfg.pretrain
        params = [q for m in (self.encoder, self.projector, self.predictor) for q in m.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def f_o(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.encoder(x)))

    def _bns(self) -> list[nn.Module]:
        return [m for m in (*self.encoder.modules(), *self.projector.modules())
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def f_s(self, y: torch.Tensor) -> torch.Tensor:
        """The stop-gradient network: f_o's encoder (and, after combine, projector) with θ_s = θ_o, no gradient."""
        return self.encoder(y)

    def loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss_total, loss_s, loss_m, what update_queue stores)`` for three views."""
        mc = self.mc
        x1, x2, x3 = views
        p1, p2, p3 = self.f_o(x1), self.f_o(x2), self.f_o(x3)
        with torch.no_grad():
            z1, z2 = self.f_m(x1), self.f_m(x2)
            raw_z1 = z1
            z1, z2 = NN(self.Q, z1), NN(self.Q, z2)
            bns = self._bns()
            saved = [(bn.momentum, bn.training) for bn in bns]
            for bn in bns:
                if mc.sg_bn_stats == "frozen":
                    bn.momentum = 0.0
                if mc.sg_bn_batch == "running":
                    bn.train(False)
            y_1, y_3 = divide(x1, mc.grid), divide(x3, mc.grid)
            vd_1, vd_3 = self.f_s(y_1), self.f_s(y_3)
            v_1, v_3 = combine(vd_1, mc.k, mc.grid * mc.grid), combine(vd_3, mc.k, mc.grid * mc.grid)
            c_1, c_3 = self.projector(v_1), self.projector(v_3)
            for bn, (momentum, training) in zip(bns, saved):
                bn.momentum = momentum
                bn.train(training)
        loss_s = (L(c_1, p3, mc.tau) + L(c_3, p1, mc.tau)) / 2
        loss_m = (L(z1, p2, mc.tau) + L(z2, p1, mc.tau)) / 2
        loss_total = loss_s + mc.lam * loss_m
        enqueued = z1 if mc.enqueue == "neighbour" else raw_z1
        return loss_total, loss_s, loss_m, enqueued

    def update(self, loss_total: torch.Tensor, enqueued: torch.Tensor, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_total.backward()
        self.optimizer.step()
        m = self.mc.ema
        with torch.no_grad():
            online = itertools.chain(self.encoder.parameters(), self.projector.parameters())
            for pm, po in zip(self.f_m.parameters(), online):
                pm.copy_(m * pm + (1 - m) * po)
            n = enqueued.shape[0]
            self.Q = torch.cat([self.Q[n:], enqueued])  # dequeue the oldest batch, enqueue this one

    def step(self, views: list[torch.Tensor], step: int, total: int) -> torch.Tensor:
        """One optimisation step on three views; returns the detached loss."""
        p = self.cfg.pretrain
        lr = cosine_lr(step, total, p.lr, p.final_lr, getattr(p, "warmup_steps", 0))
        loss_total, _, _, enqueued = self.loss(views)
        self.update(loss_total, enqueued, lr)
        return loss_total.detach()

    def train_step(self, images: torch.Tensor, idx: torch.Tensor, augment, gen: torch.Generator,
                   step: int, total: int) -> torch.Tensor:
        """As ``pretrain.train_step``: gather the batch, make three views with ``augment``, one step."""
        x = images[idx]
        x1, x2, x3 = augment(x, gen), augment(x, gen), augment(x, gen)
        return self.step([x1, x2, x3], step, total)
