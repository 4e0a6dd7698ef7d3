"""Datasets: sources, download, safe extraction, the prepared uint8 form, batched augmentation.

``load_split(root, dataset, split)`` is the public loader of what ``mnclglf download``
prepared: ``(images, labels)``, uint8 N×3×H×W and int64 N.
"""

from mnclglf.data.store import load_split

__all__ = ["load_split"]
