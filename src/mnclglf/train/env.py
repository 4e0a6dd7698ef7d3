"""Device selection and the data path: the whole split on the training device as uint8."""

from __future__ import annotations

import torch

from mnclglf.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batches(n: int, batch_size: int, gen: torch.Generator, drop_last: bool = True,
            device: torch.device | None = None) -> list[torch.Tensor]:
    """One epoch of shuffled index batches, drawn from a CPU generator (device-independent order).

    With ``device`` the permutation is copied there once and the batches are views of it:
    one host-to-device copy per epoch instead of one per step.
    """
    perm = torch.randperm(n, generator=gen)
    if device is not None:
        perm = perm.to(device)
    stop = n - n % batch_size if drop_last else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]
