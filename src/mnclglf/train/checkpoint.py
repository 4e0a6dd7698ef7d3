"""Atomic checkpoints that hold everything a bit-exact resume needs, and safe loading.

A checkpoint records a fingerprint of the run's configuration; one written under
another configuration is ignored rather than resumed (DVC keeps the checkpoint
folder across reruns with ``persist: true``). Each save renames the checkpoint it
replaces to ``checkpoint.prev.pt``, so an unreadable newest checkpoint leaves the
one before it to resume from; a finished run drops it once its final checkpoint reads
back (the paper profile's checkpoints are 0.2-0.4 GB each, and DVC caches the folder).

Every file is read with ``torch.load(weights_only=True)``: tensors and plain Python
data only, so a pickle in an encoder or a checkpoint cannot run code (the RNG states
are stored as tensors and plain types for that reason).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnclglf.errors import UserError
from mnclglf.io import atomic_path

RESUME_KEYS = ("epoch", "history", "init_std", "method", "optimizer", "rng")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``"""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in gens.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``payload`` atomically; serialised in memory first, so a full disk fails as ENOSPC."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path, previous_path(path) if keep_previous else None) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())


def _reason(exc: BaseException) -> str:
    """The gist of a load failure in a few words (torch's own messages run to many lines)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL [\w.]+|Unsupported operand \d+|Unsupported global: [^ ]+", text)
        return ("it holds Python objects, not only tensors and plain data"
                + (f": {found.group(0)}" if found else "") + "; refused unread, no code was run")
    cut = isinstance(exc, (zipfile.BadZipFile, EOFError))
    if cut or "corrupted" in text or "failed finding central" in text:
        return "truncated or corrupt"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:160]


def load(path: Path, what: str) -> dict[str, Any]:
    """The mapping stored at ``path``, read without running any code; else a one-line error."""
    try:
        with warnings.catch_warnings():  # torch warns, in many lines, of protocols it then refuses
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            AttributeError, ImportError, TypeError, KeyError, IndexError) as exc:
        raise UserError(f"{path}: not a readable {what} ({_reason(exc)})") from None
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise UserError(f"{path}: not a {what} (it holds a {kind}, not a mapping)")
    return payload


def _read_checkpoint(path: Path) -> dict[str, Any]:
    payload = load(path, "checkpoint")
    missing = [k for k in ("fingerprint", *RESUME_KEYS) if k not in payload]
    if missing:
        raise UserError(f"{path}: not a checkpoint of mnclglf pretrain (no key {missing[0]!r})")
    return payload


def drop_previous(path: Path) -> None:
    """Delete the checkpoint kept before ``path`` once ``path`` itself reads back whole."""
    prev = previous_path(path)
    if prev.is_file():
        _read_checkpoint(path)
        prev.unlink()


def load_if_matching(path: Path, expected_fingerprint: str
                     ) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint to resume from (``None`` for a fresh start), and a one-line note saying which.

    A checkpoint of another configuration is not resumed. An unreadable ``path`` falls back to
    the checkpoint kept before it (:func:`previous_path`), else to a fresh start; the note says so.
    """
    broken = None
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            payload = _read_checkpoint(candidate)
        except UserError as exc:
            broken = broken or str(exc)
            continue
        if payload["fingerprint"] != expected_fingerprint:
            return None, (f"{broken}; starting afresh" if broken else None)
        note = f"resuming from {candidate} (epoch {payload['epoch']})"
        return payload, (f"{broken}; {note}" if broken else note)
    return None, (f"{broken}; no usable checkpoint, starting afresh" if broken else None)
