"""The one registry of downloadable datasets: where each archive lives and what it holds.

Every fact the download, verification and conversion steps rely on (URL, MD5, archive
name, top folder, class count, image size, split sizes) is written here once, so the
README, the CLI and the tests cannot disagree about them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIRROR_ENV = "MNCLGLF_MIRROR"


@dataclass(frozen=True)
class DatasetSource:
    """One official archive and the shape of the dataset it unpacks to."""

    name: str
    url: str
    md5: str
    archive: str
    top_dir: str
    num_classes: int
    image_size: int
    train_count: int
    test_count: int
    size_bytes: int | None = None

    def download_url(self) -> str:
        """The official URL, or ``$MNCLGLF_MIRROR/<archive>`` when that variable is set."""
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        if mirror:
            return f"{mirror.rstrip('/')}/{self.archive}"
        return self.url


SOURCES: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource(
            name="cifar10",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
            archive="cifar-10-python.tar.gz",
            top_dir="cifar-10-batches-py",
            num_classes=10,
            image_size=32,
            train_count=50_000,
            test_count=10_000,
            size_bytes=170_498_071,
        ),
        DatasetSource(
            name="cifar100",
            url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            md5="eb9058c3a382ffc7106e4002c42a8d85",
            archive="cifar-100-python.tar.gz",
            top_dir="cifar-100-python",
            num_classes=100,
            image_size=32,
            train_count=50_000,
            test_count=10_000,
            size_bytes=169_001_437,
        ),
        DatasetSource(
            name="tinyimagenet",
            url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            md5="90528d7ca1a48142e341f4ef8d21d0de",
            archive="tiny-imagenet-200.zip",
            top_dir="tiny-imagenet-200",
            num_classes=200,
            image_size=64,
            train_count=100_000,
            test_count=10_000,
            size_bytes=248_100_043,
        ),
    )
}
