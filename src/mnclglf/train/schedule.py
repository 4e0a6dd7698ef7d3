"""Per-step learning-rate schedules."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, base: float, final: float = 0.0, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine from ``base`` to ``final`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every group except those marked ``fixed_lr`` (the released predictor)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr
