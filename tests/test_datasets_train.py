"""Each benchmark dataset, prepared from an archive in its official format, trains and evaluates unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fixtures.official_archives import build_cifar10, build_cifar100, build_tinyimagenet
from mnclglf import config
from mnclglf.cli import main
from mnclglf.data import load_split
from mnclglf.train.linear_eval import linear_eval
from mnclglf.train.pretrain import pretrain

BUILDERS = {"cifar10": build_cifar10, "cifar100": build_cifar100, "tinyimagenet": build_tinyimagenet}


@pytest.mark.parametrize("dataset", sorted(BUILDERS))
def test_download_then_pretrain_and_linear_eval(dataset: str, tmp_path: Path, tiny_raw: dict) -> None:
    torch.set_num_threads(1)
    (tmp_path / "archives").mkdir()
    built = BUILDERS[dataset](tmp_path / "archives")
    root = tmp_path / "data"
    result = CliRunner().invoke(main, ["download", "--dataset", dataset, "--root", str(root), "--source",
                                       str(built.archive), "--md5", built.md5, "--quiet"])
    assert result.exit_code == 0, result.output
    images, labels = load_split(root, dataset, "train")
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64

    raw = {**tiny_raw, "data_root": str(root), "pretrain": {**tiny_raw["pretrain"], "epochs": 1, "batch_size": 4},
           "mnclglf": {"queue_size": 8}, "linear_eval": {**tiny_raw["linear_eval"], "epochs": 1, "batch_size": 4}}
    cfg = config.run_config(raw, dataset, "mnclglf")
    summary = pretrain(cfg, tmp_path / "pre", tmp_path / "ckpt", tmp_path / "pre.json", progress=False)
    assert summary["steps"] == images.shape[0] // 4 and summary["final_loss"] == summary["final_loss"]
    metrics = linear_eval(tmp_path / "pre" / "encoder.pt", config.linear_eval_config(raw, dataset), str(root), 0,
                          tmp_path / "lin", tmp_path / "lin.json", progress=False)
    assert metrics["dataset"] == dataset and 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
