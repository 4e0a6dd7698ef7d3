"""The shared base of every method: backbone, heads, momentum copy, queue, step hooks.

A method turns a list of augmented views (and, for the supervised baseline, the
labels) into a :class:`StepOutput`; it knows nothing of the loop, the optimiser or
the data. The loop calls :meth:`Method.after_step` once the optimiser has stepped.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from mnclglf import ops
from mnclglf.config import RunConfig
from mnclglf.models import Predictor, Projector, ResNet18
from mnclglf.models.queue import Queue


@dataclass
class StepOutput:
    """The loss to back-propagate, extra scalars to log, and the embedding the collapse monitor reads."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None


class Method(nn.Module, abc.ABC):
    """Base class. Subclasses set ``n_views`` and implement :meth:`step`."""

    name: str = ""
    n_views: int = 2
    uses_labels: bool = False

    def __init__(self, cfg: RunConfig, num_classes: int, *, projector: bool = True, predictor: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        self.backbone = ResNet18(m.stem, m.width, m.zero_init_residual)
        self.projector = Projector(self.backbone.out_dim, m.proj_hidden, m.proj_out) if projector else None
        self.predictor = Predictor(m.proj_out, m.pred_hidden) if predictor else None
        self._momentum_pairs: list[tuple[nn.Module, nn.Module]] = []
        self._deferred_pushes: list[tuple[Queue, torch.Tensor]] = []

    # -- building blocks -------------------------------------------------------------
    def momentum_copy(self, *modules: nn.Module) -> nn.Module:
        """A frozen EMA copy of ``modules`` (as one Sequential), registered for :meth:`ema_update`."""
        online = nn.Sequential(*modules)
        target = copy.deepcopy(online)
        target.requires_grad_(False)
        self._momentum_pairs.append((online, target))
        return target

    @torch.no_grad()
    def ema_update(self, m: float) -> None:
        """θ_m ← m·θ_m + (1 − m)·θ_o for every momentum copy (parameters only; BN buffers are its own)."""
        for online, target in self._momentum_pairs:
            ops.ema_(list(target.parameters()), list(online.parameters()), m)

    def push_after_step(self, queue: Queue, z: torch.Tensor) -> None:
        """Enqueue ``z`` once the optimiser has stepped, so this step's loss sees the queue as it was."""
        self._deferred_pushes.append((queue, z.detach()))

    def flush_pushes(self) -> None:
        for queue, z in self._deferred_pushes:
            queue.push(z)
        self.discard_pushes()

    def discard_pushes(self) -> None:
        """Forget pushes of a step that will not be applied (e.g. a benchmark's measurement step)."""
        self._deferred_pushes.clear()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """g(f(x)) of the back-propagation network."""
        assert self.projector is not None
        return self.projector(self.backbone(x))

    # -- the interface the loop uses --------------------------------------------------
    @abc.abstractmethod
    def step(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> StepOutput:
        """One training step's forward passes and loss, from ``n_views`` augmented views."""

    def after_step(self) -> None:
        """Called after each optimiser step: EMA updates (in subclasses), then the deferred queue pushes."""
        self.flush_pushes()

    def param_groups(self) -> list[dict]:
        """Optimiser groups; ``fixed_lr`` groups keep their initial lr (the released predictor)."""
        head = list(self.predictor.parameters()) if self.predictor is not None else []
        head_ids = {id(p) for p in head}
        body = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body, "name": "body", "fixed_lr": False}]
        if head:
            groups.append({"params": head, "name": "predictor", "fixed_lr": False})
        return groups
