"""Turn an official dataset archive into the prepared ``.npz`` form, all or nothing.

``prepare`` is the single entry point of ``mnclglf download``. For the downloadable
datasets it fetches (or takes a local) archive, verifies its MD5, extracts it safely
into a temporary ``<root>/.<dataset>.tmp-*`` directory, converts it there and renames
that directory to ``<root>/<dataset>`` only when every file is written. The raw
extracted tree is deleted; the archive stays in ``<root>/downloads/`` for reuse.

Layout of ``<root>/<dataset>/``: ``train.npz``, ``test.npz`` and ``meta.json`` (see
:mod:`mnclglf.data.store`), plus

* cifar100: ``train_coarse_labels.npy`` / ``test_coarse_labels.npy`` (int64, the
  20 superclasses; names in ``meta["coarse_classes"]``);
* tinyimagenet: ``val/<wnid>/val_<k>.JPEG``, the labelled validation set in
  ImageFolder layout, from which ``test.npz`` is built. ``meta["classes"]`` holds the
  wnids in ``wnids.txt`` order (which defines the label indices) and
  ``meta["class_names"]`` their ``words.txt`` names. ImageFolder would number the
  classes alphabetically instead, so use ``meta["classes"]`` to map its indices.

Samples are ordered by batch for CIFAR (as in the archive) and, for TinyImageNet, by
label index and then by the image number in the file name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mnclglf.data.archives import extract, load_pickle
from mnclglf.data.digits import NAME as DIGITS
from mnclglf.data.digits import prepare_digits
from mnclglf.data.download import fetch, is_url, normalize_md5
from mnclglf.data.sources import SOURCES, DatasetSource
from mnclglf.data.store import SPLITS, meta_path, save_meta, save_split, split_path
from mnclglf.errors import UserError

DATASETS: tuple[str, ...] = (DIGITS, *SOURCES)

Builder = Callable[[DatasetSource, Path, Path, bool], dict[str, Any]]


def prepare(
    dataset: str,
    root: Path | str = "data",
    *,
    source: str | None = None,
    md5: str | None = None,
    digits_size: int = 16,
    digits_test_fraction: float = 0.2,
    digits_seed: int = 0,
    retries: int = 5,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Prepare ``dataset`` under ``root`` and return ``<root>/<dataset>``.

    ``source`` is a URL or a local archive (default: the registry URL, or the
    ``MNCLGLF_MIRROR`` mirror); ``md5`` overrides the registry digest. Data already
    prepared from an archive with the expected digest is returned without any I/O
    beyond reading ``meta.json``.
    """
    root = Path(root)
    if dataset == DIGITS:
        if source is not None or md5 is not None:
            raise UserError("--source and --md5 do not apply to digits: it is bundled with scikit-learn")
        return prepare_digits(root, size=digits_size, test_fraction=digits_test_fraction, seed=digits_seed)
    spec = SOURCES.get(dataset)
    if spec is None:
        raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    expected = normalize_md5(md5) if md5 is not None else spec.md5
    out = root / dataset
    if is_prepared(root, dataset, expected):
        return out
    origin = source if source is not None else spec.download_url()
    archive = fetch(
        origin,
        root / "downloads" / spec.archive,
        expected,
        retries=retries,
        backoff=backoff,
        progress=progress,
        expected_size=spec.size_bytes if expected == spec.md5 else None,
    )
    build_from_archive(dataset, root, archive, origin, expected, progress)
    return out


def build_from_archive(dataset: str, root: Path, archive: Path, origin: str, md5: str, progress: bool) -> None:
    """Extract ``archive`` into a staging folder, build the prepared split there, then swap it in
    as ``<root>/<dataset>``: an interrupted build never leaves a half-prepared dataset."""
    spec = SOURCES[dataset]
    staging = _fresh_dir(root, f".{dataset}.tmp-")
    raw = staging / "raw"
    try:
        extract(archive, raw)
        try:
            meta = _BUILDERS[dataset](spec, raw, staging, progress)
        except UserError as exc:
            # Name files by their place in the archive, not by a temporary path that is about to vanish.
            raise UserError(str(exc).replace(f"{raw}{os.sep}", f"{archive}:")) from exc
        shutil.rmtree(raw)
        meta.update(
            dataset=dataset,
            image_size=[spec.image_size, spec.image_size],
            source=origin if is_url(origin) else str(Path(origin).expanduser().resolve()),
            source_md5=md5,
        )
        save_meta(root, staging.name, meta)
        _swap_in(staging, root / dataset)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_prepared(root: Path | str, dataset: str, md5: str) -> bool:
    """Whether ``<root>/<dataset>`` was fully prepared from the archive with digest ``md5``."""
    path = meta_path(root, dataset)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("source_md5") != md5:
        return False
    return all(split_path(root, dataset, split).is_file() for split in SPLITS)


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new uniquely named directory with the umask's permissions (``mkdtemp`` would make it private)."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to ``out``, replacing an older preparation."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_splits(staging: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    counts = {}
    for split, (images, labels) in splits.items():
        save_split(staging.parent, staging.name, split, images, labels)
        counts[split] = len(labels)
    return counts


def _top_dir(raw: Path, spec: DatasetSource) -> Path:
    top = raw / spec.top_dir
    if not top.is_dir():
        found = ", ".join(sorted(p.name for p in raw.iterdir())) or "nothing"
        raise UserError(f"{top}: missing (expected this top folder; the archive holds {found})")
    return top


def _field(record: Any, key: str, path: Path) -> Any:
    """``record[key]`` for a CIFAR pickle dict, whose keys are ``bytes`` (Python 2) or ``str``."""
    if isinstance(record, dict):
        for k in (key.encode(), key):
            if k in record:
                return record[k]
    raise UserError(f"{path}: expected a dict with key {key!r}, found {type(record).__name__}")


def _names(record: Any, key: str, path: Path) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in _field(record, key, path)]


def _cifar_images(record: Any, path: Path, size: int) -> np.ndarray:
    """``data`` rows (1024 R, 1024 G, 1024 B values, each plane row-major) as N×3×size×size."""
    data = _field(record, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be uint8 N×{3 * size * size}, found {found}")
    return data.reshape(-1, 3, size, size)


def _cifar_labels(record: Any, key: str, path: Path, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(_field(record, key, path), dtype=np.int64)
    if labels.shape != (n,):
        raise UserError(f"{path}: {key!r} must hold {n} labels, found shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: {key!r} must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return labels


def _build_cifar10(spec: DatasetSource, raw: Path, staging: Path, progress: bool) -> dict[str, Any]:
    top = _top_dir(raw, spec)
    classes = _names(load_pickle(top / "batches.meta"), "label_names", top / "batches.meta")
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    files = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for split, name in files:
        path = top / name
        record = load_pickle(path)
        images = _cifar_images(record, path, spec.image_size)
        parts[split].append((images, _cifar_labels(record, "labels", path, len(images), len(classes))))
    splits = {
        split: (np.concatenate([i for i, _ in batches]), np.concatenate([lab for _, lab in batches]))
        for split, batches in parts.items()
    }
    return {"classes": classes, "counts": _write_splits(staging, splits)}


def _build_cifar100(spec: DatasetSource, raw: Path, staging: Path, progress: bool) -> dict[str, Any]:
    top = _top_dir(raw, spec)
    meta = load_pickle(top / "meta")
    classes = _names(meta, "fine_label_names", top / "meta")
    coarse_classes = _names(meta, "coarse_label_names", top / "meta")
    splits = {}
    for split in SPLITS:
        path = top / split
        record = load_pickle(path)
        images = _cifar_images(record, path, spec.image_size)
        fine = _cifar_labels(record, "fine_labels", path, len(images), len(classes))
        coarse = _cifar_labels(record, "coarse_labels", path, len(images), len(coarse_classes))
        np.save(staging / f"{split}_coarse_labels.npy", coarse)
        splits[split] = (images, fine)
    return {
        "classes": classes,
        "coarse_classes": coarse_classes,
        "coarse_labels": {split: f"{split}_coarse_labels.npy" for split in SPLITS},
        "counts": _write_splits(staging, splits),
    }


def _build_tinyimagenet(spec: DatasetSource, raw: Path, staging: Path, progress: bool) -> dict[str, Any]:
    top = _top_dir(raw, spec)
    wnids = _read_wnids(top / "wnids.txt")
    names = _read_words(top / "words.txt", wnids)
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid, label in index.items():
        files = _jpegs(top / "train" / wnid / "images")
        train_paths += files
        train_labels += [label] * len(files)
    val_root = _reorganise_val(top / "val", staging / "val", index)
    val_paths: list[Path] = []
    val_labels: list[int] = []
    for wnid, label in index.items():
        if (val_root / wnid).is_dir():
            files = _jpegs(val_root / wnid)
            val_paths += files
            val_labels += [label] * len(files)
    splits = {
        "train": (_decode_jpegs(train_paths, spec.image_size, "train", progress), np.array(train_labels, np.int64)),
        "test": (_decode_jpegs(val_paths, spec.image_size, "val", progress), np.array(val_labels, np.int64)),
    }
    return {
        "classes": wnids,
        "class_names": names,
        "val_dir": "val",
        "counts": _write_splits(staging, splits),
    }


def _read_wnids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing from the archive (expected one wnid per line)")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise UserError(f"{path}: expected distinct wnids, one per line, found {len(wnids)} with duplicates or none")
    return wnids


def _read_words(path: Path, wnids: Sequence[str]) -> list[str]:
    """Human-readable names of ``wnids`` from the tab-separated ``words.txt``."""
    if not path.is_file():
        raise UserError(f"{path}: missing from the archive (expected '<wnid>\\t<names>' lines)")
    words = {}
    for line in path.read_text().splitlines():
        wnid, _, text = line.partition("\t")
        words[wnid.strip()] = text.strip()
    missing = [w for w in wnids if w not in words]
    if missing:
        raise UserError(f"{path}: no names for wnids {', '.join(missing[:5])}")
    return [words[w] for w in wnids]


def _natural_key(path: Path) -> tuple[Any, ...]:
    """Sort ``x_2`` before ``x_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _jpegs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: missing from the archive (expected a folder of .JPEG images)")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg")), key=_natural_key)
    if not files:
        raise UserError(f"{folder}: no .JPEG images")
    return files


def _reorganise_val(val: Path, out: Path, index: dict[str, int]) -> Path:
    """Copy ``val/images/*`` into ``out/<wnid>/`` as listed in ``val_annotations.txt`` (ImageFolder layout)."""
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"{annotations}: missing from the archive (expected 'file\\twnid\\tx0\\ty0\\tx1\\ty1' lines)")
    for n, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{annotations}: line {n}: expected tab-separated file and wnid, found {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise UserError(f"{annotations}: line {n}: wnid {wnid!r} is not in wnids.txt")
        if Path(name).name != name or name in ("", ".", ".."):
            raise UserError(f"{annotations}: line {n}: expected a bare file name, found {name!r}")
        src = val / "images" / name
        if not src.is_file():
            raise UserError(f"{annotations}: line {n}: {src.name} is not in val/images/")
        (out / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / wnid / name)
    if not out.is_dir():
        raise UserError(f"{annotations}: no validation images listed")
    return out


def _decode_jpeg(path: Path, size: int) -> np.ndarray:
    """One image as 3×size×size uint8 RGB; grayscale and CMYK files are converted."""
    try:
        with Image.open(path) as img:
            if img.size != (size, size):
                raise UserError(f"{path.name}: expected {size}×{size} pixels, found {img.size[0]}×{img.size[1]}")
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path.name}: not a readable image ({exc})") from exc
    return rgb.transpose(2, 0, 1)


def _decode_jpegs(paths: Sequence[Path], size: int, label: str, progress: bool) -> np.ndarray:
    """Decode in threads (PIL releases the GIL) into one preallocated N×3×size×size array."""
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    bar = Progress(
        TextColumn(f"[bold]decoding {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        with bar:
            task = bar.add_task(label, total=len(paths))
            for i, image in enumerate(pool.map(lambda p: _decode_jpeg(p, size), paths)):
                images[i] = image
                bar.advance(task)
    finally:
        pool.shutdown(cancel_futures=True)
    return images


_BUILDERS: dict[str, Builder] = {
    "cifar10": _build_cifar10,
    "cifar100": _build_cifar100,
    "tinyimagenet": _build_tinyimagenet,
}
