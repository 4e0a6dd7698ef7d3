"""What ran where: one environment record per stage, written next to the stage's metrics.

Each stage calls, at its end::

    write_environment(paths.metrics_dir(dataset, run) / f"env_{stage}.json",
                      environment_record(seed, start_time, end_time))

The record names the code (git commit, else a digest of the source tree), the container
image (when built from the Dockerfile), the software stack (Python, torch, CUDA, cuDNN, the
driver), the hardware (GPU name and count, peak GPU memory of this process), the lock file's
digest, the seed and the time span. Nothing here fails a stage: a probe that cannot answer
records ``None``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnclglf.io import write_json

SCHEMA = 1
# What the source digest covers when there is no git checkout (e.g. inside the image).
SOURCE_FILES = ("params.yaml", "dvc.yaml", "requirements.lock", "pyproject.toml")
SOURCE_DIRS = ("src",)
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_TIMEOUT_S = 10.0


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC (what stages pass as start/end time)."""
    return dt.datetime.now(dt.timezone.utc)


def _as_utc(t: dt.datetime | float | int | str) -> dt.datetime:
    if isinstance(t, dt.datetime):
        return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    if isinstance(t, str):
        return _as_utc(dt.datetime.fromisoformat(t.replace("Z", "+00:00")))
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc)


def iso_utc(t: dt.datetime | float | int | str) -> str:
    """ISO 8601, UTC, second precision with a ``Z`` suffix: ``2025-01-31T12:00:00Z``."""
    return _as_utc(t).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """stdout of ``cmd`` (stripped), or None when it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def file_sha256(path: Path | str) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _skipped(rel: Path) -> bool:
    return (rel.name.endswith(_SKIP_SUFFIXES)
            or any(part in _SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts))


def source_digest(root: Path | str = ".") -> str:
    """sha256 over the source tree (src/ plus the pipeline and lock files): path and content of each file.

    Independent of file times, owners and of where the tree lies, so a checkout and the image's
    copy of the same commit give the same digest.
    """
    root = Path(root)
    files: list[Path] = [root / name for name in SOURCE_FILES if (root / name).is_file()]
    for d in SOURCE_DIRS:
        base = root / d
        if base.is_dir():
            files += [p for p in base.rglob("*") if p.is_file() and not _skipped(p.relative_to(root))]
    h = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update((file_sha256(p) or "").encode() + b"\n")
    return h.hexdigest()


def git_info(root: Path | str = ".") -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout at ``root``, or None without .git (or without git)."""
    root = Path(root)
    if not (root / ".git").exists():
        return None
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if commit is None:  # no git binary: read the ref by hand
        head = root / ".git" / "HEAD"
        try:
            text = head.read_text().strip()
            if text.startswith("ref: "):
                ref = root / ".git" / text[5:]
                commit = ref.read_text().strip() if ref.is_file() else None
            else:
                commit = text
        except OSError:
            commit = None
        return {"commit": commit, "dirty": None} if commit else None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def _nvidia_smi() -> dict[str, Any] | None:
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    if not out:
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_total_mib": _int(parts[2])})
    if not gpus:
        return None
    return {"driver": gpus[0]["driver"], "gpus": gpus}


def _int(s: str) -> int | None:
    try:
        return int(float(s))
    except ValueError:
        return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None,
                            "cuda_available": False, "gpu_count": 0, "gpu_names": [],
                            "peak_gpu_memory_allocated_bytes": None, "peak_gpu_memory_reserved_bytes": None,
                            "torch_num_threads": torch.get_num_threads()}
    try:
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 - a probe, never fatal
        pass
    try:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info.update(cuda_available=True, gpu_count=n,
                        gpu_names=[torch.cuda.get_device_name(i) for i in range(n)])
            if torch.cuda.is_initialized():
                info["peak_gpu_memory_allocated_bytes"] = max(torch.cuda.max_memory_allocated(i) for i in range(n))
                info["peak_gpu_memory_reserved_bytes"] = max(torch.cuda.max_memory_reserved(i) for i in range(n))
            else:
                info["peak_gpu_memory_allocated_bytes"] = 0
                info["peak_gpu_memory_reserved_bytes"] = 0
    except Exception:  # noqa: BLE001
        pass
    return info


def _package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_record(seed: int, start_time: dt.datetime | float | str, end_time: dt.datetime | float | str,
                       root: Path | str = ".") -> dict[str, Any]:
    """The environment of one stage run. ``start_time``/``end_time``: datetimes (naive = UTC) or epoch seconds.

    ``root`` is the repository root (stages run there, so the default is the working directory).
    """
    root = Path(root)
    start, end = _as_utc(start_time), _as_utc(end_time)
    git = git_info(root)
    torch_info = _torch_info()
    smi = _nvidia_smi()
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "seed": int(seed),
        "start_time": iso_utc(start),
        "end_time": iso_utc(end),
        "wall_s": round((end - start).total_seconds(), 3),
        "git_commit": git["commit"] if git else (os.environ.get("MNCLGLF_GIT_COMMIT") or None),
        "git_dirty": git["dirty"] if git else None,
        "source_sha256": source_digest(root),
        "lock_sha256": file_sha256(root / "requirements.lock"),
        "in_container": in_container(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        **torch_info,
        "driver": smi["driver"] if smi else None,
        "nvidia_smi": smi["gpus"] if smi else None,
        "packages": _package_versions(("numpy", "torchvision", "dvc", "dvclive", "mnclglf")),
        "env": {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES",
                                                "OMP_NUM_THREADS", "PYTHONHASHSEED")},
    }
    if git is None and record["git_commit"] is None:
        del record["git_commit"], record["git_dirty"]
        record["source_note"] = "no .git: the code is identified by source_sha256 (src/ + pipeline + lock files)"
    image_digest = os.environ.get("MNCLGLF_IMAGE_DIGEST")
    if image_digest:
        record["image_digest"] = image_digest
    base_image = os.environ.get("MNCLGLF_BASE_IMAGE")
    if base_image:
        record["base_image"] = base_image
    return record


def write_environment(path: Path | str, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON at ``path`` (atomically); return the path."""
    write_json(path, record)
    return Path(path)
