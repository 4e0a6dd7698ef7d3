"""The bundled CPU dataset: scikit-learn's 8×8 handwritten digits, served as RGB uint8.

It ships inside scikit-learn (no download), so CI and a new user's laptop can run
the whole pipeline offline. Pixel values 0..16 are scaled to 0..255, the images
upsampled bilinearly to ``size``×``size`` and repeated over three channels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnclglf.data.store import save_meta, save_split

NAME = "digits"


def digits_arrays(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 N×3×size×size and their int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    gray = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if size != gray.shape[-1]:
        gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    images = gray.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    return images, bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: the same indices on every machine for the same seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def prepare_digits(root: Path | str, size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write ``<root>/digits/{train,test}.npz`` and ``meta.json``."""
    images, labels = digits_arrays(size)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    save_split(root, NAME, "train", images[train_idx], labels[train_idx])
    save_split(root, NAME, "test", images[test_idx], labels[test_idx])
    digest = hashlib.md5(images.tobytes() + labels.tobytes()).hexdigest()
    save_meta(
        root,
        NAME,
        {
            "dataset": NAME,
            "classes": [str(c) for c in range(10)],
            "counts": {"train": int(len(train_idx)), "test": int(len(test_idx))},
            "image_size": [size, size],
            "source": "sklearn.datasets.load_digits",
            "source_md5": digest,
            "split": {"test_fraction": test_fraction, "seed": seed, "stratified": True},
        },
    )
    return Path(root) / NAME
