"""Fetch an archive and prove it is the expected one before anything reads its contents.

Downloads stream into ``<dest>.part`` with urllib (no extra dependency), resume with an
HTTP ``Range`` request after a dropped connection, back off exponentially between
attempts and show a rich progress bar on stderr. Nothing is extracted or unpickled
until the MD5 matches, so a corrupted or substituted file never reaches the parsers.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mnclglf.errors import UserError

CHUNK = 1 << 20
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_PERMANENT_HTTP = frozenset({400, 401, 403, 404, 405, 410, 451})


class _RetryableError(Exception):
    """An attempt failed in a way another attempt may fix (dropped connection, 5xx, …)."""


class _RangeRefusedError(_RetryableError):
    """HTTP 416 on a resume: the ``.part`` file is already complete, or is not a prefix of this file."""


def is_url(source: str) -> bool:
    """True for ``http://`` and ``https://`` sources; anything else is a local path."""
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def normalize_md5(md5: str) -> str:
    """Lower-case a digest and refuse anything that is not 32 hex digits."""
    digest = md5.strip().lower()
    if not _MD5_RE.match(digest):
        raise UserError(f"--md5 must be 32 hexadecimal digits, got {md5!r}")
    return digest


def md5_file(path: Path | str) -> str:
    """Hex MD5 of a file, read in chunks so multi-GB archives need no memory."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def verify_md5(path: Path, expected: str, *, delete_on_mismatch: bool) -> None:
    """Raise :class:`UserError` naming the file and both digests unless they match."""
    actual = md5_file(path)
    if actual == expected:
        return
    if delete_on_mismatch:
        path.unlink(missing_ok=True)
        action = "deleted it; retry, or pass --md5 if the release changed"
    else:
        action = "pass --md5 if this is a different release"
    raise UserError(f"{path}: MD5 is {actual}, expected {expected} ({action})")


def fetch(
    source: str,
    dest: Path,
    md5: str,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    expected_size: int | None = None,
) -> Path:
    """Return a verified archive: a local ``source`` used in place, or a URL downloaded to ``dest``."""
    md5 = normalize_md5(md5)
    if is_url(source):
        return download(
            source,
            dest,
            md5,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
            expected_size=expected_size,
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"--source {source}: no such file (expected an http(s) URL or a downloaded archive)")
    verify_md5(path, md5, delete_on_mismatch=False)
    return path


def download(
    url: str,
    dest: Path,
    md5: str,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    expected_size: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` resumably, verify its MD5, and return ``dest``.

    An existing ``dest`` with the right digest is reused without any request. ``retries``
    extra attempts follow a failure, waiting ``backoff * 2**k`` seconds before each.
    """
    md5 = normalize_md5(md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if md5_file(dest) == md5:
            return dest
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    bar = _progress_bar() if progress else None
    last_error = ""
    with bar if bar is not None else nullcontext():
        task = bar.add_task(dest.name, total=expected_size) if bar is not None else None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _attempt(url, part, timeout, bar, task)
                break
            except _RangeRefusedError as exc:
                if md5_file(part) == md5:
                    break
                part.unlink()
                last_error = str(exc)
            except _RetryableError as exc:
                last_error = str(exc)
        else:
            raise UserError(
                f"download of {url} failed after {retries + 1} attempts: {last_error} "
                f"(partial file kept at {part}; rerun to resume)"
            )
    verify_md5(part, md5, delete_on_mismatch=True)
    os.replace(part, dest)
    return dest


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _attempt(url: str, part: Path, timeout: float, bar: Progress | None, task: TaskID | None) -> None:
    """One request: append to ``part`` from its current size, or restart it when the server ignores Range."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mnclglf"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            raise _RangeRefusedError(f"server refused to resume at byte {offset}") from exc
        if exc.code in _PERMANENT_HTTP:
            raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _RetryableError(str(getattr(exc, "reason", exc))) from exc
    with response:
        resumed = _resume_point(response, offset)
        if resumed is None:
            part.unlink()
            raise _RetryableError(
                f"server answered Range bytes={offset}- with Content-Range "
                f"{response.headers.get('Content-Range')!r}; restarting"
            )
        start, total = resumed
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None and length.isdigit() else None
        if total is None and remaining is not None:
            total = start + remaining
        if bar is not None and task is not None:
            bar.update(task, completed=start, total=total)
        received = 0
        try:
            with open(part, "r+b" if start else "wb") as fh:
                fh.truncate(start)
                fh.seek(start)
                while chunk := _read(response, start + received):
                    fh.write(chunk)
                    received += len(chunk)
                    if bar is not None and task is not None:
                        bar.advance(task, len(chunk))
        except OSError as exc:
            raise UserError(f"cannot write {part}: {exc}") from exc
    if remaining is not None and received < remaining:
        raise _RetryableError(f"connection closed after {start + received} of {start + remaining} bytes")


def _read(response: http.client.HTTPResponse, done: int) -> bytes:
    """Next chunk of the body; a network failure becomes retryable (a failed disk write must not)."""
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise _RetryableError(f"connection lost after {done} bytes: {exc}") from exc


def _resume_point(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None] | None:
    """Where the body starts in the file (0 on a plain 200) and the full size if stated; None if unusable."""
    if response.status != 206:
        return 0, None
    match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        return None
    total = match.group(3)
    return offset, int(total) if total != "*" else None
