"""Every invalid parameter edit is refused at load, whichever stage runs: exit status 1, one
line naming the key, nothing written. Each edit hits a value the digits run really uses, or a
shared value that a digits override masks (the paper profile would read it)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mnclglf import config
from mnclglf.cli import main
from mnclglf.errors import UserError

REPO = Path(__file__).resolve().parents[1]
VALID = yaml.safe_load((REPO / "params.yaml").read_text())


def edit(path: str, value: Any) -> dict[str, Any]:
    """The repository's params with the key at the dotted ``path`` set to ``value``."""
    raw = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


# (dotted key, invalid value, what the one line must name)
EDITS = [
    ("pretrain", [1, 2], "pretrain = [1, 2]: expected a mapping"),
    ("model", None, "model = null"),
    ("augment.jitter", [-0.4, 0.4, 0.4, 0.1], "augment.jitter[0] = -0.4"),
    ("augment.jitter", [0.4, 0.4, 0.4, 0.7], "augment.jitter[3] = 0.7"),
    ("mnclglf.grid", 3, "mnclglf.grid = 3: must divide the 16-px views"),
    ("pretrain.epochs", "ten", "pretrain.epochs = 'ten'"),              # masked by overrides.digits
    ("pretrain.lr", -0.1, "pretrain.lr = -0.1"),                        # masked by overrides.digits
    ("augment.crop_scale", [1.0, 0.4], "augment.crop_scale = [1.0, 0.4]: expected low <= high"),
    ("augment.flip_p", 1.5, "augment.flip_p = 1.5"),                    # masked by overrides.digits
    ("linear_eval.epochs", 0, "linear_eval.epochs = 0"),       # masked by linear_eval_overrides
    ("overrides.digits.augment.crop_scale", [1.0, 0.4], "overrides.digits.augment.crop_scale"),
    ("overrides.digits.augment.flip_p", -0.1, "overrides.digits.augment.flip_p = -0.1"),
    ("overrides.digits.pretrain.epochs", -1, "overrides.digits.pretrain.epochs = -1"),
    ("overrides.digits.pretrain.batch_size", 1, "overrides.digits.pretrain.batch_size = 1"),
    ("overrides.digits.pretrain.keep_epochs", [4, 8, 99], "pretrain.keep_epochs: epoch 99"),
    ("overrides.digits.mnclglf.queue_size", 32,
     "mnclglf.queue_size = 32: must be >= pretrain.batch_size (64)"),
    ("overrides.digits.mnclglf", None, "overrides.digits.mnclglf = null"),
    ("overrides.digits.fastmoco.k", 5, "overrides.digits.fastmoco.k = 5"),
    ("overrides.digits.model.width", 0, "overrides.digits.model.width = 0"),
    ("overrides.digits.mnclglf.bogus", 1, "overrides.digits.mnclglf.bogus: unknown key"),
    ("overrides.digits.mnclglf-released.augment.size", 33,
     "mnclglf.grid = 2: must divide the 33-px views"),
    ("overrides.digits.mnclglf-released.linear_eval.test_crop", 40, "linear_eval.test_crop = 40"),
    ("linear_eval_overrides.digits.batch_size", 0, "linear_eval_overrides.digits.batch_size = 0"),
    ("mnclglf.ema", 1.0, "mnclglf.ema = 1.0: expected a number >= 0 and < 1"),
    ("mnclglf.k", 5, "mnclglf.k = 5"),
    ("mnclglf.tau", 0, "mnclglf.tau = 0"),
    ("mnclglf.variant", "released", "mnclglf.variant = 'released'"),
    ("mnclglf.sg_bn_batch", "eval", "mnclglf.sg_bn_batch = 'eval'"),
    ("augment.blur_sigma", [2.0, 0.1], "augment.blur_sigma = [2.0, 0.1]"),
    ("augment.gray_p", 2, "augment.gray_p = 2"),
    ("mocov2.bn_groups", 0, "mocov2.bn_groups = 0"),
    ("byol.ema", 1.0, "byol.ema = 1.0"),
    ("linear_eval.momentum", 1.0, "linear_eval.momentum = 1.0"),
    ("mnclglf-released.augment.normalize", "imagenet1k", "mnclglf-released.augment.normalize"),
    ("speed.precision", "fp16", "speed.precision = 'fp16'"),
    ("digits.size", 4, "digits.size = 4"),
    ("overrides", ["digits"], "overrides = ['digits']: expected a mapping"),
    ("mnclglf", [1, 2], "mnclglf = [1, 2]: expected a mapping"),
    ("eval_methods", ["mnclglf", "mnclglf-v2"], "eval_methods: unknown value 'mnclglf-v2'"),
]


@pytest.mark.parametrize(("key", "value", "named"), EDITS, ids=[f"{k}={v!r}" for k, v, _ in EDITS])
def test_invalid_edit_is_refused_in_one_line_before_anything_is_written(
        key: str, value: Any, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(edit(key, value), sort_keys=False))
    result = CliRunner().invoke(main, ["pretrain", "--dataset", "digits", "--method", "mnclglf",
                                       "--params", str(params), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["params.yaml"]  # nothing written


def test_at_least_25_edits() -> None:
    assert len(EDITS) >= 25


def test_the_doctor_refuses_an_invalid_file_first(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`make smoke` and `make all` run the doctor first: a paper-profile value broken behind a
    digits override stops the smoke profile's first command."""
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(edit("pretrain.epochs", "ten"), sort_keys=False))
    result = CliRunner().invoke(main, ["doctor", "--profile", "smoke", "--no-bench",
                                       "--params", str(params)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: pretrain.epochs = 'ten': expected an integer, "
                                          "a number >= 0"]


def test_the_repository_params_load_unchanged() -> None:
    raw = config.read_params(REPO / "params.yaml")
    assert raw == VALID


def test_ema_one_is_refused_in_every_method_that_has_one() -> None:
    """m = 1.0 would freeze the momentum network at its initial weights."""
    for section in ("mnclglf", "mocov2", "byol", "fastmoco"):
        with pytest.raises(UserError, match=rf"{section}\.ema = 1\.0: expected a number >= 0 "
                                            r"and < 1"):
            config.validate(edit(f"{section}.ema", 1.0))
        config.validate(edit(f"{section}.ema", 0.999))
