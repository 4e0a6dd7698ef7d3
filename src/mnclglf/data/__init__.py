"""Datasets: sources, download, safe extraction, the prepared uint8 form, batched augmentation.

``load_split(root, dataset, split)`` is the public loader of what ``mnclglf download``
prepared: ``(images, labels)``, uint8 N×3×H×W and int64 N. It is imported on first use,
so that reading the registry (``mnclglf.data.sources``, used by the parameter check)
does not load torch.
"""

from typing import Any

__all__ = ["load_split"]


def __getattr__(name: str) -> Any:
    if name == "load_split":
        from mnclglf.data.store import load_split

        return load_split
    raise AttributeError(f"module 'mnclglf.data' has no attribute {name!r}")
