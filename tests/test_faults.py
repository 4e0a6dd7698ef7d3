"""Hostile and broken files, divergence and a full disk: each is one line, no code runs, no
traceback, and the last good state survives (issue 13). The slow SIGKILL trials are in
test_faults_kill.py."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from mnclglf.cli import main
from mnclglf.errors import EXIT_DIVERGED, UserError
from mnclglf.io import atomic_path, write_text
from mnclglf.train import checkpoint as ckpt
from mnclglf.train import pretrain as pt

RUN = Path("runs/digits/mnclglf")
SHORT = {"epochs": 2, "batch_size": 128, "checkpoint_every": 1}


class Payload:
    """A pickle that runs a shell command when it is loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def work(tiny_raw: dict, digits_root: Path, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a params file of a 2-epoch digits run (11 steps an epoch)."""
    tiny_raw["pretrain"] = {**tiny_raw["pretrain"], **SHORT}
    tiny_raw["mnclglf"] = {**tiny_raw["mnclglf"], "queue_size": 256}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--params", "params.yaml", "--quiet"])


def pretrain() -> Result:
    return cli("pretrain", "--dataset", "digits", "--method", "mnclglf")


def linear_eval(encoder: Path) -> Result:
    return cli("linear-eval", "--dataset", "digits", "--method", "mnclglf",
               "--encoder", str(encoder))


def one_error_line(result: Result) -> str:
    """The single ``error:`` line a failure prints (the start line of a stage may precede it)."""
    start = ("pretrain ", "linear-eval ")
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith(start)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def backbone(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["backbone"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- hostile and broken encoders -----------------------------------------------------------
def hostile_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A torch.save zip and a plain pickle, each with a payload calling os.system."""
    zipped, plain = tmp_path / "zipped.pt", tmp_path / "plain.pt"
    torch.save({"backbone": {}, "model": Payload(marker)}, zipped)
    plain.write_bytes(pickle.dumps({"backbone": {}, "model": Payload(marker)}))
    return {"zipped": zipped, "plain": plain}


@pytest.mark.parametrize("kind", ["zipped", "plain"])
def test_an_encoder_with_a_payload_never_runs_it(work: Path, kind: str) -> None:
    marker = work / "MARKER"
    path = hostile_files(work, marker)[kind]
    result = linear_eval(path)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(path) in line and "refused unread, no code was run" in line
    assert not marker.exists()


def test_a_checkpoint_with_a_payload_never_runs_it_and_the_run_starts_afresh(work: Path) -> None:
    marker = work / "MARKER"
    (work / RUN / "ckpt").mkdir(parents=True)
    torch.save({"fingerprint": Payload(marker), "epoch": 1},
               work / RUN / "ckpt" / pt.CHECKPOINT_FILE)
    result = pretrain()
    assert result.exit_code == 0, result.output
    assert ("refused unread, no code was run); no usable checkpoint, starting afresh"
            in result.stderr)
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted 2-epoch run: its encoder, checkpoint folder and params, to copy."""
    import copy

    from conftest import TINY
    from mnclglf import config
    from mnclglf.data.digits import prepare_digits

    d = tmp_path_factory.mktemp("trained")
    raw = copy.deepcopy(TINY)
    raw["data_root"] = str(d / "data")
    raw["pretrain"] = {**raw["pretrain"], **SHORT}
    raw["mnclglf"] = {**raw["mnclglf"], "queue_size": 256}
    prepare_digits(raw["data_root"], size=8)
    torch.set_num_threads(1)
    cfg = config.run_config(raw, "digits", "mnclglf")
    pt.pretrain(cfg, d / "pre", d / "ckpt", d / "m.json", progress=False)
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == [pt.CHECKPOINT_FILE]  # prev dropped
    real = pt.train_step  # the same run stopped in epoch 2: its epoch-1 checkpoint

    def crash(s, idx, step, total):  # noqa: ANN001, ANN202
        if step == 1437 // 128 + 2:
            raise KeyboardInterrupt
        return real(s, idx, step, total)

    pt.train_step = crash
    try:
        pt.pretrain(cfg, d / "pre1", d / "ckpt1", d / "m1.json", progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        pt.train_step = real
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    return {"encoder": d / "pre" / pt.ENCODER_FILE, "ckpt": d / "ckpt", "params": d / "params.yaml",
            "epoch1": d / "ckpt1" / pt.CHECKPOINT_FILE}


def encoder_variants(encoder: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Broken encoder files and the words their one line must hold."""
    good = torch.load(encoder, weights_only=True)
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes | object, words: str) -> None:
        path = tmp_path / f"{name}.pt"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            torch.save(data, path)
        out[name] = (path, words)

    raw = encoder.read_bytes()
    put("truncated", raw[: len(raw) // 2], "not a readable encoder file (truncated or corrupt)")
    put("empty", b"", "not a readable encoder file (truncated or corrupt)")
    put("text", b"not a checkpoint\n", "not a readable encoder file")
    put("no_model", {k: v for k, v in good.items() if k != "model"}, "key 'model' is missing")
    put("a_list", [1, 2, 3], "not a encoder file (it holds a list, not a mapping)")
    put("bare_state_dict", good["backbone"], "key 'backbone' is missing")
    put("bad_stem", {**good, "model": {**good["model"], "stem": "vit"}}, "model.stem = 'vit'")
    put("wrong_width", {**good, "model": {**good["model"], "width": 0.25}},
        "does not fit a ResNet-18")
    put("bad_std", {**good, "normalize": {"mean": [0, 0, 0], "std": [0, 1, 1]}},
        "normalize.std must be > 0")
    return out


def test_broken_encoders_are_one_line_naming_the_file(trained: dict[str, Path], work: Path) -> None:
    for name, (path, words) in encoder_variants(trained["encoder"], work).items():
        result = linear_eval(path)
        assert result.exit_code == 1, (name, result.output)
        line = one_error_line(result)
        assert str(path) in line and words in line, (name, line)
    assert not (work / "metrics").exists()


# -- corrupt checkpoints: the one before it, else a fresh start -----------------------------------
def copy_ckpt(trained: dict[str, Path], work: Path) -> Path:
    """The finished run's params and checkpoint folder (epoch 2, epoch 1 beside it) in ``work``."""
    (work / "params.yaml").write_text(trained["params"].read_text())
    dst = work / RUN / "ckpt"
    dst.mkdir(parents=True)
    for f in trained["ckpt"].iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    (dst / "checkpoint.prev.pt").write_bytes(trained["epoch1"].read_bytes())
    assert torch.load(dst / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    return dst


def test_a_truncated_checkpoint_resumes_from_the_one_before(trained: dict[str, Path],
                                                             work: Path) -> None:
    dst = copy_ckpt(trained, work)
    data = (dst / pt.CHECKPOINT_FILE).read_bytes()
    (dst / pt.CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    result = pretrain()
    assert result.exit_code == 0, result.output
    prev = RUN / "ckpt" / "checkpoint.prev.pt"
    assert [ln for ln in result.stderr.splitlines() if "checkpoint" in ln] == [
        f"{RUN / 'ckpt' / pt.CHECKPOINT_FILE}: not a readable checkpoint (truncated or corrupt); "
        f"resuming from {prev} (epoch 1)"]
    assert same(backbone(work / RUN / "pretrain" / pt.ENCODER_FILE), backbone(trained["encoder"]))


def test_no_readable_checkpoint_starts_afresh_and_says_so(trained: dict[str, Path],
                                                           work: Path) -> None:
    dst = copy_ckpt(trained, work)
    (dst / pt.CHECKPOINT_FILE).write_bytes(b"\0" * 100)
    torch.save({"epoch": 1}, dst / "checkpoint.prev.pt")  # readable, but wrong keys
    result = pretrain()
    assert result.exit_code == 0, result.output
    assert "no usable checkpoint, starting afresh" in result.stderr
    assert same(backbone(work / RUN / "pretrain" / pt.ENCODER_FILE), backbone(trained["encoder"]))


def test_a_checkpoint_whose_tensors_do_not_fit_is_one_line(trained: dict[str, Path],
                                                            work: Path) -> None:
    dst = copy_ckpt(trained, work)
    state = torch.load(dst / pt.CHECKPOINT_FILE, weights_only=True)
    state["method"] = {k: v[:1] if v.ndim else v for k, v in state["method"].items()}
    torch.save(state, dst / pt.CHECKPOINT_FILE)
    result = pretrain()
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "does not fit this run" in line and "delete it to start afresh" in line


# -- a corrupt prepared split --------------------------------------------------------------
def test_a_truncated_split_names_the_file_and_the_rebuild_command(work: Path,
                                                                  tiny_raw: dict) -> None:
    split = Path(tiny_raw["data_root"]) / "digits" / "train.npz"
    split.write_bytes(split.read_bytes()[:1000])
    line = one_error_line(result := pretrain())
    assert result.exit_code == 1
    root = tiny_raw["data_root"]
    assert line == (f"error: {split}: cannot be read (truncated or corrupt); rebuild it with "
                    f"`rm -r {split.parent} && mnclglf download --dataset digits --root {root}`")
    assert not (work / "runs").exists()


# -- divergence ----------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "epoch"),
                         [(float("nan"), 2), (float("inf"), 2), (float("-inf"), 1)])
def test_a_non_finite_loss_stops_at_its_epoch_and_keeps_the_last_checkpoint(
        work: Path, monkeypatch: pytest.MonkeyPatch, bad: float, epoch: int) -> None:
    real, steps = pt.train_step, 1437 // 128

    def diverging(s, idx, step, total):  # noqa: ANN001, ANN202
        loss, logs, emb = real(s, idx, step, total)
        return (loss * bad if step == (epoch - 1) * steps + 3 else loss), logs, emb

    monkeypatch.setattr(pt, "train_step", diverging)
    result = pretrain()
    assert result.exit_code == EXIT_DIVERGED != 1
    line = one_error_line(result)
    ckpt_file = RUN / "ckpt" / pt.CHECKPOINT_FILE
    kept = (f"the last good checkpoint, {ckpt_file} (epoch 1), is left as it was" if epoch == 2
            else "no checkpoint was written before it")
    assert line == (f"error: pretraining mnclglf on digits diverged: loss is {bad} at epoch "
                    f"{epoch}; {kept}")
    if epoch == 2:
        assert torch.load(work / ckpt_file, weights_only=True)["epoch"] == 1
    else:
        assert not (work / ckpt_file).exists()
    assert not (work / RUN / "pretrain" / pt.ENCODER_FILE).exists()


# -- a full disk ---------------------------------------------------------------------------
def no_space(*_args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text(target, "old\n")
    with pytest.raises(UserError, match=r"out\.txt: no space left on device while writing it; "
                                        r"the previous file is kept"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            no_space()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second checkpoint write fails with ENOSPC (as fsync reports it on a full disk)."""
    real, calls = ckpt.atomic_path, {"n": 0}

    def filling(final, previous=None):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            monkeypatch.setattr(os, "fsync", no_space)
        return real(final, previous)

    monkeypatch.setattr(ckpt, "atomic_path", filling)
    result = pretrain()
    monkeypatch.undo()
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line == (f"error: {RUN / 'ckpt' / pt.CHECKPOINT_FILE}: no space left on device while "
                    f"writing it; the previous file is kept; free some space and rerun")
    assert torch.load(work / RUN / "ckpt" / pt.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    assert not list((work / RUN / "ckpt").glob("*.tmp"))


def test_every_load_is_weights_only() -> None:
    """No torch.load in the package may unpickle arbitrary objects."""
    src = Path(__file__).resolve().parents[1] / "src"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert text.count("torch.load(") == text.count("weights_only=True"), path
