"""The prepared form of every dataset: one ``.npz`` per split plus ``meta.json``.

``<root>/<dataset>/<split>.npz`` holds ``images`` (uint8, N×3×H×W) and ``labels``
(int64, N); it loads without pickle. ``<root>/<dataset>/meta.json`` holds class
names, counts per split and the digest of the source it was built from.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnclglf.errors import UserError
from mnclglf.io import atomic_path, write_json

SPLITS = ("train", "test")


def split_path(root: Path | str, dataset: str, split: str) -> Path:
    return Path(root) / dataset / f"{split}.npz"


def meta_path(root: Path | str, dataset: str) -> Path:
    return Path(root) / dataset / "meta.json"


def save_split(root: Path | str, dataset: str, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Validate shapes and dtypes, then write one split atomically."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 N×3×H×W, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    path = split_path(root, dataset, split)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=np.ascontiguousarray(images), labels=labels.astype(np.int64))
    return path


def save_meta(root: Path | str, dataset: str, meta: dict[str, Any]) -> Path:
    path = meta_path(root, dataset)
    write_json(path, meta)
    return path


def load_meta(root: Path | str, dataset: str) -> dict[str, Any]:
    path = meta_path(root, dataset)
    if not path.is_file():
        raise UserError(f"{path} not found: run `mnclglf download --dataset {dataset} --root {root}` first")
    return json.loads(path.read_text())


def load_split(root: Path | str, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: uint8 N×3×H×W and int64 N, as prepared by ``mnclglf download``.

    ``split`` is ``train`` or ``test`` (TinyImageNet's ``test`` is its labelled validation set).
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = split_path(root, dataset, split)
    if not path.is_file():
        raise UserError(f"{path} not found: run `mnclglf download --dataset {dataset} --root {root}` first")
    rebuild = (f"rebuild it with `rm -r {path.parent} && mnclglf download --dataset {dataset} "
               f"--root {root}`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = torch.from_numpy(npz["images"])
            labels = torch.from_numpy(npz["labels"]).long()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = "truncated or corrupt" if isinstance(exc, (zipfile.BadZipFile, EOFError)) else \
            " ".join(str(exc).split())[:120]
        raise UserError(f"{path}: cannot be read ({reason}); {rebuild}") from None
    if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        raise UserError(f"{path}: not a prepared split (images {tuple(images.shape)} "
                        f"{images.dtype}, labels {tuple(labels.shape)}); {rebuild}")
    return images, labels
