"""Unpack untrusted archives and pickles without letting them write or run anything unexpected.

A verified MD5 only proves the file is the one someone vouched for; ``--md5`` lets a user
vouch for any file. So every tar and zip member is checked (no absolute paths, no ``..``,
no link leaving the destination, no device), zips are capped in member count and
uncompressed size, and CIFAR pickles may only rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import importlib
import lzma
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnclglf.errors import UserError

MAX_TOTAL_BYTES = 1 << 30
MAX_MEMBERS = 200_000
_CHUNK = 1 << 20

_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


def extract(
    archive: Path,
    dest: Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Safely unpack a tar (any compression) or zip ``archive`` into the new directory ``dest``.

    Members land in a temporary sibling that is renamed to ``dest`` only once every member
    is written, so ``dest`` is either complete or absent. The default caps leave room to
    spare above the largest official archive, TinyImageNet (a 248 MB zip of about 120,000
    JPEGs and text files).
    """
    if dest.exists():
        raise UserError(f"{dest} already exists; refusing to extract {archive.name} over it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    unpack: Callable[[Path, Path, int, int], None]
    if zipfile.is_zipfile(archive):
        unpack = _unpack_zip
    elif _is_tarfile(archive):
        unpack = _unpack_tar
    else:
        raise UserError(f"{archive}: not a readable tar or zip archive (truncated or corrupt?)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        unpack(archive, tmp, max_total_bytes, max_members)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_tarfile(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except (OSError, EOFError, zlib.error):
        return False


def _unpack_tar(archive: Path, dest: Path, max_total_bytes: int, max_members: int) -> None:
    """Extract with tarfile's ``data`` filter plus absolute-path and size caps of our own."""
    if not hasattr(tarfile, "data_filter"):
        raise UserError("safe tar extraction needs Python 3.11.4 or newer (tarfile extraction filters)")
    seen = {"members": 0, "bytes": 0}

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        name = member.name
        if name.startswith(("/", "\\")) or _has_drive(name):
            raise _refused(archive, name, "absolute path")
        seen["members"] += 1
        seen["bytes"] += max(member.size, 0)
        _check_caps(archive, name, seen["members"], seen["bytes"], max_total_bytes, max_members)
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            raise _refused(archive, name, _filter_reason(exc)) from exc

    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(dest, filter=guard)
            # Drain the compressed stream so gzip/bz2/xz check their trailing CRC and length.
            while tf.fileobj is not None and tf.fileobj.read(_CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        raise UserError(f"{archive}: corrupt or truncated tar archive ({exc})") from exc
    except OSError as exc:
        raise UserError(f"{archive}: extraction failed ({exc})") from exc


def _refused(archive: Path, name: str, reason: str) -> UserError:
    return UserError(f"{archive}: member {name!r} refused: {reason}")


def _filter_reason(exc: tarfile.FilterError) -> str:
    reasons = {
        tarfile.AbsolutePathError: "absolute path",
        tarfile.OutsideDestinationError: "path leads outside the destination",
        tarfile.SpecialFileError: "device, FIFO or other special file",
        tarfile.AbsoluteLinkError: "link to an absolute path",
        tarfile.LinkOutsideDestinationError: "link points outside the destination",
    }
    for kind, reason in reasons.items():
        if isinstance(exc, kind):
            return reason
    return str(exc)


def _unpack_zip(archive: Path, dest: Path, max_total_bytes: int, max_members: int) -> None:
    """Check every entry first (paths, links, declared sizes), then stream members out under the caps."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise UserError(
                    f"{archive}: {len(infos)} members exceed the limit of {max_members} (zip bomb?); "
                    "refusing to extract"
                )
            declared = 0
            for info in infos:
                _check_zip_member(archive, zf, info)
                declared += info.file_size
            if declared > max_total_bytes:
                raise UserError(
                    f"{archive}: members declare {declared} uncompressed bytes, over the limit of "
                    f"{max_total_bytes} (zip bomb?); refusing to extract"
                )
            written = 0
            for info in infos:
                written = _write_zip_member(archive, zf, info, dest, written, max_total_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:
        raise UserError(f"{archive}: corrupt or unsupported zip archive ({exc})") from exc
    except OSError as exc:
        raise UserError(f"{archive}: extraction failed ({exc})") from exc


# Compression methods Python's zipfile can read (bzip2 and lzma only when their modules exist).
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


def _check_zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.compress_type not in _ZIP_METHODS:
        raise _refused(archive, name, f"unsupported compression method {info.compress_type}")
    if "\x00" in name:
        raise _refused(archive, name, "NUL byte in the name")
    if name.startswith(("/", "\\")) or _has_drive(name):
        raise _refused(archive, name, "absolute path")
    if ".." in _parts(name):
        raise _refused(archive, name, "path leads outside the destination ('..')")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        with zf.open(info) as link:
            target = link.read(4096).decode("utf-8", "replace")
        detail = "outside the destination" if _link_escapes(name, target) else "inside the archive"
        raise _refused(archive, name, f"symlink to {target!r} ({detail}); zip symlinks are not extracted")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refused(archive, name, "device, FIFO or other special file")


def _write_zip_member(
    archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, written: int, max_total_bytes: int
) -> int:
    """Stream one member out, stopping as soon as it exceeds its declared size or the total cap."""
    target = dest.joinpath(*_parts(info.filename))
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return written
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            written += len(chunk)
            if size > info.file_size:
                raise UserError(
                    f"{archive}: member {info.filename!r} holds more than its declared {info.file_size} bytes "
                    "(zip bomb?); refusing to extract"
                )
            if written > max_total_bytes:
                raise UserError(
                    f"{archive}: uncompressed size exceeds the limit of {max_total_bytes} bytes "
                    f"at member {info.filename!r} (zip bomb?); refusing to extract"
                )
            out.write(chunk)
    return written


def _check_caps(archive: Path, name: str, members: int, total: int, max_total_bytes: int, max_members: int) -> None:
    if members > max_members:
        raise UserError(f"{archive}: more than {max_members} members (at {name!r}); refusing to extract")
    if total > max_total_bytes:
        raise UserError(
            f"{archive}: uncompressed size exceeds the limit of {max_total_bytes} bytes at member {name!r}; "
            "refusing to extract"
        )


def _parts(name: str) -> list[str]:
    """Path components of an archive name, splitting on both separators and dropping empty and ``.`` parts."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _has_drive(name: str) -> bool:
    return len(name) >= 2 and name[1] == ":" and name[0].isalpha()


def _link_escapes(name: str, target: str) -> bool:
    """Whether a link target, taken relative to its member's folder, is absolute or climbs above the root."""
    if target.startswith(("/", "\\")) or _has_drive(target):
        return True
    depth = len(_parts(name)) - 1
    for part in _parts(target):
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    The CIFAR batches are Python 2 pickles; a plain ``pickle.load`` would run any callable
    a tampered file names. Only the globals a numpy array needs are resolved, under both
    the numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) module names.
    """

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise UserError(
                f"{self._source}: pickle refers to {module}.{name}, which is not allowed (only numpy arrays)"
            )
        if module == "numpy.core.multiarray":
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_pickle(path: Path) -> Any:
    """Load a CIFAR batch with :class:`RestrictedUnpickler`; dict keys stay ``bytes`` as in the originals."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, path).load()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
