"""A run killed mid-epoch resumes from its last checkpoint and ends with the same weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnclglf import config
from mnclglf.errors import UserError
from mnclglf.paths import KEPT_ENCODER
from mnclglf.train import pretrain as pt


class Crash(Exception):
    pass


def run(raw: dict, out: Path, crash_after_steps: int | None = None, monkeypatch=None) -> dict:
    cfg = config.run_config(raw, "digits", "mnclglf")
    if crash_after_steps is not None:
        real = pt.train_step
        calls = {"n": 0}

        def crashing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > crash_after_steps:
                raise Crash
            return real(*args, **kwargs)

        monkeypatch.setattr(pt, "train_step", crashing)
        with pytest.raises(Crash):
            pt.pretrain(cfg, out / "pre", out / "ckpt", out / "m.json", progress=False)
        monkeypatch.setattr(pt, "train_step", real)
        return {}
    return pt.pretrain(cfg, out / "pre", out / "ckpt", out / "m.json", progress=False)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "pre" / pt.ENCODER_FILE, weights_only=False)["backbone"]


@pytest.fixture
def resume_raw(tiny_raw: dict, digits_root: Path) -> dict:
    tiny_raw["pretrain"] = {**tiny_raw["pretrain"], "epochs": 2, "batch_size": 128, "checkpoint_every": 1}
    tiny_raw["mnclglf"] = {**tiny_raw["mnclglf"], "queue_size": 256}
    return tiny_raw


def test_crash_and_resume_equals_uninterrupted(resume_raw: dict, tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    steps_per_epoch = 1437 // 128
    straight = run(resume_raw, tmp_path / "a")
    # Crash in the middle of epoch 2 (after epoch 1's checkpoint), then rerun the same command.
    run(resume_raw, tmp_path / "b", crash_after_steps=steps_per_epoch + 2, monkeypatch=monkeypatch)
    assert torch.load(tmp_path / "b" / "ckpt" / pt.CHECKPOINT_FILE, weights_only=False)["epoch"] == 1
    resumed = run(resume_raw, tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["final_loss"] == resumed["final_loss"]
    ca = torch.load(tmp_path / "a" / "ckpt" / pt.CHECKPOINT_FILE, weights_only=False)
    cb = torch.load(tmp_path / "b" / "ckpt" / pt.CHECKPOINT_FILE, weights_only=False)
    assert torch.equal(ca["method"]["queue.bank"], cb["method"]["queue.bank"])
    assert [h["loss"] for h in ca["history"]] == [h["loss"] for h in cb["history"]]


def test_checkpoint_of_another_configuration_is_not_resumed(resume_raw: dict, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    resume_raw["pretrain"]["epochs"] = 1
    run(resume_raw, tmp_path)
    resume_raw["mnclglf"] = {**resume_raw["mnclglf"], "lam": 2.0}
    cfg = config.run_config(resume_raw, "digits", "mnclglf")
    from mnclglf.train import checkpoint as ckpt

    state, note = ckpt.load_if_matching(tmp_path / "ckpt" / pt.CHECKPOINT_FILE,
                                        ckpt.fingerprint(config.to_dict(cfg)))
    assert state is None and note is None


def test_sigkill_then_rerun_completes(resume_raw: dict, tmp_path: Path) -> None:
    """A real SIGKILL of the CLI after its first checkpoint, then the same command: it resumes
    from that checkpoint (not afresh) and finishes."""
    resume_raw["pretrain"]["epochs"] = 4
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(resume_raw))
    cmd = [sys.executable, "-m", "mnclglf", "pretrain", "--dataset", "digits", "--method", "mnclglf",
           "--params", str(params), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_file = tmp_path / "runs" / "digits" / "mnclglf" / "ckpt" / pt.CHECKPOINT_FILE
    deadline = time.time() + 120
    while not ckpt_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    at_kill = torch.load(ckpt_file, weights_only=True)["epoch"]
    assert 1 <= at_kill < 4
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ckpt_rel = Path("runs/digits/mnclglf/ckpt") / pt.CHECKPOINT_FILE
    assert f"resuming from {ckpt_rel} (epoch {at_kill})" in done.stderr
    assert torch.load(ckpt_file, weights_only=True)["epoch"] == 4
    assert (tmp_path / "runs" / "digits" / "mnclglf" / "pretrain" / pt.ENCODER_FILE).is_file()
    assert not list((tmp_path / "runs" / "digits" / "mnclglf" / "ckpt").glob("*.tmp"))


def kept_weights(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "pre" / KEPT_ENCODER.format(epoch), weights_only=False)["backbone"]


def test_kept_encoders_survive_a_resumed_rerun(resume_raw: dict, tmp_path: Path, monkeypatch) -> None:
    """DVC empties the output folder before a rerun, and a resumed run does not pass the kept epochs
    again: the kept encoders come back all the same, equal to an uninterrupted run's (Table 5)."""
    torch.set_num_threads(1)
    resume_raw["pretrain"]["keep_epochs"] = [1]
    (tmp_path / "b" / "ckpt").mkdir(parents=True)
    (tmp_path / "b" / "ckpt" / KEPT_ENCODER.format(9)).write_text("an earlier configuration's")
    run(resume_raw, tmp_path / "a")
    run(resume_raw, tmp_path / "b", crash_after_steps=1437 // 128 + 2, monkeypatch=monkeypatch)
    assert not (tmp_path / "b" / "ckpt" / KEPT_ENCODER.format(9)).exists()  # a fresh start clears stale ones
    for rerun in range(2):  # resume mid-run, then rerun the finished run: each time after DVC's cleanup
        shutil.rmtree(tmp_path / "b" / "pre")
        run(resume_raw, tmp_path / "b")
        a, b = kept_weights(tmp_path / "a", 1), kept_weights(tmp_path / "b", 1)
        assert all(torch.equal(a[k], b[k]) for k in a), rerun
    (tmp_path / "b" / "ckpt" / KEPT_ENCODER.format(1)).unlink()
    with pytest.raises(UserError, match=r"encoder_e1\.pt: the encoder kept at epoch 1 .* is missing"):
        run(resume_raw, tmp_path / "b")


def test_keep_epochs_outside_the_run_are_refused(resume_raw: dict) -> None:
    resume_raw["pretrain"]["keep_epochs"] = [1, 3]
    with pytest.raises(UserError, match=r"pretrain.keep_epochs: epoch 3 is not in 1..pretrain.epochs \(2\)"):
        config.run_config(resume_raw, "digits", "mnclglf")
