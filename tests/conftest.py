"""Shared fixtures: a tiny prepared digits dataset and a tiny parameter set for fast CPU runs."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

TINY: dict[str, Any] = {
    "seed": 0,
    "model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
    "augment": {"crop_scale": [0.4, 1.0]},
    # the CPU by name: the paper datasets refuse `device: auto` without CUDA (train/env.py)
    "pretrain": {"epochs": 2, "batch_size": 16, "checkpoint_every": 1, "threads": 0, "device": "cpu"},
    "mnclglf": {"queue_size": 64},
    "linear_eval": {"epochs": 2, "batch_size": 32, "device": "cpu"},
}


# Groups `make test` leaves out (CI runs each as its own step): pytest -m faults / inductor / slurm.
SEPARATE_GROUPS = {
    "slurm": "needs Slurm and munge, started as root (tests/slurm/local_cluster.sh); pytest -m slurm",
    "faults": "slow fault injection (SIGKILL and resume, two dvc repro at once); pytest -m faults",
    "inductor": "torch.compile with inductor, minutes on a cold compiler cache; pytest -m inductor",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in SEPARATE_GROUPS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``-m``, leave the separate groups out (reported as deselected, never as skipped)."""
    if config.option.markexpr:
        return
    out = [item for item in items if any(item.get_closest_marker(g) for g in SEPARATE_GROUPS)]
    if out:
        config.hook.pytest_deselected(items=out)
        items[:] = [item for item in items if item not in out]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: tiny tensors gain nothing from more, and CI's two cores stay free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_raw(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["data_root"] = str(tmp_path / "data")
    return raw


@pytest.fixture
def digits_root(tiny_raw: dict[str, Any]) -> Path:
    """The real bundled digits at 8×8, prepared into a temporary data root."""
    from mnclglf.data.digits import prepare_digits

    prepare_digits(tiny_raw["data_root"], size=8)
    return Path(tiny_raw["data_root"])

