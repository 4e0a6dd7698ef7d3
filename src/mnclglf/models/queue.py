"""A FIFO queue of embeddings (MoCo's dictionary, NNCLR's support set, MNCLGLF's Q).

The queue is a registered buffer, so it travels in ``state_dict`` and a resumed run
continues with the same entries (the released MNCLGLF code does not save it).

Shape contract: ``bank`` is (size, dim); :meth:`push` takes (n, dim) with n <= size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Queue(nn.Module):
    def __init__(self, size: int, dim: int, overflow: str = "wrap") -> None:
        """``overflow``: ``wrap`` writes the rest of a batch at the front (a true ring);
        ``drop`` fills the tail and discards the rest (lightly's memory bank)."""
        super().__init__()
        if overflow not in ("wrap", "drop"):
            raise ValueError(f"overflow must be 'wrap' or 'drop', got {overflow!r}")
        self.overflow = overflow
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        """Overwrite the oldest ``len(z)`` rows with ``z`` (stored as given, not normalised)."""
        n = z.shape[0]
        if n > self.size:
            raise ValueError(f"batch of {n} does not fit a queue of {self.size}")
        # Positions computed on the device: no host sync in the training step.
        pos = self.ptr + torch.arange(n, device=z.device)
        if self.overflow == "wrap":
            self.bank[pos % self.size] = z.detach().to(self.bank.dtype)
            self.ptr.copy_((self.ptr + n) % self.size)
        else:  # rows ptr..size-1 take z[:size-ptr]; the rest is dropped
            # No boolean mask (its nonzero would sync): every position past the end is clamped to
            # the last row and writes the row that belongs there, so the duplicate writes agree.
            last = self.size - 1
            src = torch.arange(n, device=z.device).clamp(max=last - self.ptr)
            self.bank[pos.clamp(max=last)] = z.detach().to(self.bank.dtype)[src]
            self.ptr.copy_(torch.where(self.ptr + n >= self.size, torch.zeros_like(self.ptr), self.ptr + n))
