"""SIGKILL at chosen and random points of a pretraining run, before, during and after checkpoint
and kept-encoder writes: each rerun resumes (or starts afresh where nothing was saved) and ends with
the uninterrupted run's final and kept encoders bit for bit. Two `dvc repro` of one stage at once:
the second refuses with DVC's message and nothing is corrupted.

Slow (about 3 min on two shared cores): the ``faults`` group, run by CI as its own step
(``pytest -m faults``), not by ``make test``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY
from mnclglf.paths import KEPT_ENCODER
from mnclglf.train import pretrain as pt

pytestmark = pytest.mark.faults

EPOCHS, KEEP = 4, (2, 3)
RUN = Path("runs/digits/mnclglf")
CMD = [sys.executable, "-m", "mnclglf", "pretrain", "--dataset", "digits", "--method", "mnclglf",
       "--params", "params.yaml", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mnclglf.data.digits import prepare_digits

    root = tmp_path_factory.mktemp("data")
    prepare_digits(root, size=8)
    return root


def workdir(base: Path, data: Path) -> Path:
    """A fresh working folder with the params of a 4-epoch digits run, a checkpoint every epoch."""
    base.mkdir(parents=True)
    raw = copy.deepcopy(TINY)
    raw["data_root"] = str(data)
    raw["pretrain"] = {**raw["pretrain"], "epochs": EPOCHS, "batch_size": 128,
                       "checkpoint_every": 1, "threads": 1, "keep_epochs": list(KEEP)}
    raw["mnclglf"] = {**raw["mnclglf"], "queue_size": 256}
    (base / "params.yaml").write_text(yaml.safe_dump(raw))
    return base


def encoders(work: Path) -> dict[str, dict[str, torch.Tensor]]:
    files = [pt.ENCODER_FILE, *(KEPT_ENCODER.format(e) for e in KEEP)]
    return {f: torch.load(work / RUN / "pretrain" / f, weights_only=True)["backbone"]
            for f in files}


def rerun(work: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(CMD, cwd=work, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory,
              data: Path) -> dict[str, dict[str, torch.Tensor]]:
    work = workdir(tmp_path_factory.mktemp("ref") / "w", data)
    rerun(work)
    return encoders(work)


def writing(name: str) -> Callable[[Path], bool]:
    """True while a temporary file of ``name`` exists: the atomic write is in progress."""
    return lambda ckpt: ckpt.is_dir() and any(p.startswith(f".{name}.") and p.endswith(".tmp")
                                              for p in os.listdir(ckpt))


def written(name: str) -> Callable[[Path], bool]:
    return lambda ckpt: (ckpt / name).is_file()


def delay(seconds: float) -> Callable[[Path], bool]:
    """True ``seconds`` after training started (the DVCLive folder exists)."""
    start: list[float] = []

    def ready(ckpt: Path) -> bool:
        if not start and (ckpt.parent / "pretrain" / "live").exists():
            start.append(time.perf_counter())
        return bool(start) and time.perf_counter() - start[0] >= seconds
    return ready


def kill_when(work: Path, ready: Callable[[Path], bool], fallback: Callable[[Path], bool]) -> str:
    """Start the run, SIGKILL it as soon as ``ready`` (or, if that moment was missed, ``fallback``)
    holds; assert it was killed. Returns which condition fired."""
    ckpt = work / RUN / "ckpt"
    proc = subprocess.Popen(CMD, cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    fired, deadline = "", time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if ready(ckpt):
            fired = "ready"
        elif fallback(ckpt):
            fired = "fallback"
        if fired:
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    return fired


def saved_epoch(work: Path) -> int | None:
    """The epoch the rerun should resume from: the newest readable checkpoint's, else None."""
    for name in (pt.CHECKPOINT_FILE, "checkpoint.prev.pt"):
        try:
            return torch.load(work / RUN / "ckpt" / name, weights_only=True)["epoch"]
        except Exception:  # noqa: BLE001 - absent or cut off by the kill: the next one
            continue
    return None


TRIALS = {
    "during the first checkpoint write": (writing(pt.CHECKPOINT_FILE), written(pt.CHECKPOINT_FILE)),
    "right after the first checkpoint": (written(pt.CHECKPOINT_FILE), written(pt.CHECKPOINT_FILE)),
    "during a kept-encoder write": (writing(KEPT_ENCODER.format(2)),
                                    written(KEPT_ENCODER.format(2))),
    "during a checkpoint replacing another": (
        lambda c: written("checkpoint.prev.pt")(c) or (written(pt.CHECKPOINT_FILE)(c) and
                                                       writing(pt.CHECKPOINT_FILE)(c)),
        written("checkpoint.prev.pt")),
    "before any checkpoint": (lambda c: delay(0.0)(c) and not c.is_dir(), delay(0.0)),
    "at a random point": (delay(random.Random(13).uniform(0.2, 4.0)),
                          written(KEPT_ENCODER.format(3))),
}


@pytest.mark.parametrize("when", list(TRIALS))
def test_sigkill_then_rerun_is_bit_exact(when: str, tmp_path: Path, data: Path,
                                         reference: dict[str, dict[str, torch.Tensor]]) -> None:
    work = workdir(tmp_path / "w", data)
    kill_when(work, *TRIALS[when])
    epoch = saved_epoch(work)
    done = rerun(work)
    notes = [ln for ln in done.stderr.splitlines() if "resuming" in ln or "starting afresh" in ln]
    if epoch is None:
        assert not any("resuming" in ln for ln in notes), done.stderr
    else:
        assert len(notes) == 1 and notes[0].endswith(f"(epoch {epoch})"), done.stderr
    got = encoders(work)
    for name, want in reference.items():
        assert got[name].keys() == want.keys()
        assert all(torch.equal(got[name][k], want[k]) for k in want), (when, name)
    assert not list((work / RUN).rglob("*.tmp"))


def test_killed_twice_still_bit_exact(tmp_path: Path, data: Path,
                                      reference: dict[str, dict[str, torch.Tensor]]) -> None:
    work = workdir(tmp_path / "w", data)
    kill_when(work, written(KEPT_ENCODER.format(2)), written(KEPT_ENCODER.format(2)))
    first = saved_epoch(work)
    kill_when(work, lambda c: saved_epoch(work) != first, written(KEPT_ENCODER.format(3)))
    done = rerun(work)
    assert "resuming from" in done.stderr
    got = encoders(work)
    assert all(torch.equal(got[n][k], reference[n][k]) for n in reference for k in reference[n])


def test_two_dvc_repro_of_one_stage(tmp_path: Path) -> None:
    """The second `dvc repro` of a running stage refuses with DVC's busy message; the first finishes
    and its output and lock file are whole."""
    dvc = Path(sys.executable).with_name("dvc")
    if not dvc.is_file():
        pytest.fail(f"{dvc}: DVC is part of the locked environment (requirements.lock)")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(dvc), "init", "-q"], cwd=tmp_path, check=True, env=env)
    script = "import time; time.sleep(6); open('out.txt', 'w').write('done\\n')"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"slow": {"cmd": f"{sys.executable} -c \"{script}\"", "outs": ["out.txt"]}}}))
    first = subprocess.Popen([str(dvc), "repro", "slow"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rwlock, deadline = tmp_path / ".dvc" / "tmp" / "rwlock", time.time() + 60
    while time.time() < deadline and not (rwlock.is_file() and "out.txt" in rwlock.read_text()):
        time.sleep(0.05)
    assert first.poll() is None, "the first repro ended before the second started"
    second = subprocess.run([str(dvc), "repro", "slow"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr + second.stdout
    assert first.wait(timeout=120) == 0, first.stdout.read() if first.stdout else ""
    assert (tmp_path / "out.txt").read_text() == "done\n"
    assert "out.txt" in (tmp_path / "dvc.lock").read_text()
    status = subprocess.run([str(dvc), "status", "slow"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "up to date" in status.stdout, status.stdout
    assert json.loads(rwlock.read_text() or "{}").get("write", {}) == {}
    shutil.rmtree(tmp_path / ".dvc" / "cache", ignore_errors=True)
