"""The online k-NN monitor: a correct vote, a DVCLive curve, and no trace in the trained weights."""

from __future__ import annotations

from pathlib import Path

import torch

from mnclglf import config
from mnclglf.train import pretrain as pt
from mnclglf.train.knn import knn_top1


def test_knn_vote_on_separable_features() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert knn_top1(train, labels, test, torch.tensor([0, 1, 1]), 2, k=2) == 100.0
    assert knn_top1(train, labels, test, torch.tensor([1, 1, 1]), 2, k=2) == 100.0 * 2 / 3


def run(raw: dict, out: Path, knn_every: int) -> dict[str, torch.Tensor]:
    raw = {**raw, "pretrain": {**raw["pretrain"], "knn_every": knn_every}}
    cfg = config.run_config(raw, "digits", "mnclglf")
    pt.pretrain(cfg, out / "pre", out / "ckpt", out / "m.json", progress=False)
    return torch.load(out / "pre" / pt.ENCODER_FILE, weights_only=False)["backbone"]


def test_monitor_leaves_training_bit_identical(tiny_raw: dict, digits_root: Path,
                                               tmp_path: Path) -> None:
    tiny_raw["pretrain"] = {**tiny_raw["pretrain"], "epochs": 2, "batch_size": 128}
    tiny_raw["mnclglf"] = {**tiny_raw["mnclglf"], "queue_size": 256}
    off = run(tiny_raw, tmp_path / "off", 0)
    on = run(tiny_raw, tmp_path / "on", 1)
    assert off.keys() == on.keys()
    for name in off:  # BatchNorm running statistics included
        assert torch.equal(off[name], on[name]), name
    curves = Path("pre") / "live" / "plots" / "metrics" / "knn_top1.tsv"
    assert len((tmp_path / "on" / curves).read_text().splitlines()) == 3  # header + 2 epochs
    assert not (tmp_path / "off" / curves).exists()
