"""Device selection and the data path: the whole split on the training device as uint8.

A paper-profile run on the CPU would take weeks, so ``device: auto`` never falls back to
the CPU for a paper dataset: it stops with the reason CUDA is not usable. The CPU runs
those datasets only when asked for by name (``device: cpu``).
"""

from __future__ import annotations

import torch

from mnclglf.errors import UserError

#: Datasets whose runs are GPU work (the bundled digits data is the CPU profile).
GPU_DATASETS = ("cifar10", "cifar100", "tinyimagenet")


def cuda_problem() -> str | None:
    """Why CUDA cannot run this torch's kernels here, in one phrase; None when it can."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).strip().split(". ")[0].rstrip(".") or type(exc).__name__
        return (f"no usable NVIDIA GPU ({reason}); torch {torch.__version__} is a CUDA "
                f"{torch.version.cuda} build: it needs an NVIDIA driver >= 580 and, in Docker, "
                "`docker run --gpus all` with the NVIDIA container toolkit")
    if torch.cuda.device_count() == 0:
        return "no NVIDIA GPU is visible (CUDA_VISIBLE_DEVICES is empty, or `docker run` lacks --gpus)"
    for i in range(torch.cuda.device_count()):
        missing = unsupported_arch(i)
        if missing:
            return missing
    return None


def unsupported_arch(index: int) -> str | None:
    """A sentence when GPU ``index`` has a compute capability this torch build has no kernels for.

    A build runs a GPU with its exact ``sm_XY`` kernels, or JIT-compiles ``compute_XY`` PTX of
    an older or equal architecture.
    """
    major, minor = torch.cuda.get_device_capability(index)
    cap = major * 10 + minor
    archs = torch.cuda.get_arch_list()
    if f"sm_{cap}" in archs or any(a.startswith("compute_") and a[8:].isdigit() and int(a[8:]) <= cap
                                   for a in archs):
        return None
    return (f"GPU {index} ({torch.cuda.get_device_name(index)}) is sm_{cap}; this torch build has "
            f"kernels for {', '.join(archs)} only")


def pick_device(name: str, dataset: str | None = None, key: str = "pretrain.device") -> torch.device:
    """The training device for ``name`` (auto, cpu, cuda); ``key`` names the parameter in errors.

    ``auto`` is CUDA when usable; otherwise the CPU for the digits data and a
    :class:`UserError` for the paper datasets (:data:`GPU_DATASETS`).
    """
    if name == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is None:
        return torch.device("cuda")
    if name == "cuda":
        raise UserError(f"{key} = cuda but CUDA is not usable: {problem}")
    if dataset in GPU_DATASETS:
        raise UserError(f"{dataset} needs a CUDA GPU and CUDA is not usable: {problem}. "
                        f"To train on the CPU on purpose (weeks), set `{key}: cpu` in params.yaml")
    return torch.device("cpu")


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
