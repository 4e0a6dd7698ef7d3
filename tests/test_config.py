"""Parameters are validated against one typed definition, with one-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mnclglf import config
from mnclglf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def raw_with(**sections: dict) -> dict:
    raw = config.read_params(ROOT / "params.yaml")
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def test_committed_params_are_valid_for_every_run() -> None:
    raw = config.read_params(ROOT / "params.yaml")
    for dataset in raw["datasets"]:
        for method in raw["methods"]:
            cfg = config.run_config(raw, dataset, method)
            assert cfg.dataset == dataset
        config.linear_eval_config(raw, dataset)


def test_paper_profile_is_table2() -> None:
    cfg = config.run_config(config.read_params(ROOT / "params.yaml"), "cifar10", "mnclglf")
    p, m = cfg.pretrain, cfg.mnclglf
    assert (p.epochs, p.batch_size, p.lr, p.final_lr, p.momentum, p.weight_decay) == (200, 256, 0.1, 0.0, 0.9, 1e-4)
    assert (m.tau, m.lam, m.k, m.ema, m.queue_size) == (1.0, 6.0, 2, 0.99, 16384)
    assert (cfg.model.width, cfg.model.proj_hidden, cfg.model.proj_out, cfg.model.pred_hidden) == (1.0, 2048, 2048, 512)
    le = config.linear_eval_config(config.read_params(ROOT / "params.yaml"), "cifar10")
    assert (le.epochs, le.batch_size, le.lr, le.momentum, le.weight_decay) == (90, 256, 0.8, 0.9, 0.0)


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        ("pretrain", {"lr": -0.1}, "pretrain.lr = -0.1"),
        ("mnclglf", {"k": 5}, "mnclglf.k = 5"),
        ("mnclglf", {"lam": 0}, "mnclglf.lam = 0"),
        ("mnclglf", {"queue_size": 8}, "mnclglf.queue_size = 8"),
        ("pretrain", {"epochs": "ten"}, "pretrain.epochs = 'ten'"),
        ("mnclglf", {"variant": "mine"}, "mnclglf.variant = 'mine'"),
        ("model", {"depth": 50}, "model.depth: unknown key"),
        ("augment", {"crop_scale": [0.9, 0.2]}, "augment.crop_scale"),
    ],
)
def test_bad_values_name_key_value_and_allowed(section: str, values: dict, needle: str) -> None:
    with pytest.raises(UserError) as err:
        config.run_config(raw_with(**{section: values}), "cifar10", "mnclglf")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_unknown_method_dataset_and_top_level_key(tmp_path: Path) -> None:
    raw = config.read_params(ROOT / "params.yaml")
    with pytest.raises(UserError, match="method = 'swav'"):
        config.run_config(raw, "cifar10", "swav")
    with pytest.raises(UserError, match="dataset = 'mnist'"):
        config.run_config(raw, "mnist", "mnclglf")
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({**raw, "learning_rate": 1}))
    with pytest.raises(UserError, match="learning_rate: unknown key"):
        config.read_params(bad)
    bad.write_text(yaml.safe_dump({**raw, "methods": ["mnclglf", "swav"]}))
    with pytest.raises(UserError, match="methods: unknown value 'swav'"):
        config.read_params(bad)


def test_overrides_apply_to_one_dataset_only() -> None:
    raw = config.read_params(ROOT / "params.yaml")
    digits = config.run_config(raw, "digits", "mnclglf")
    cifar = config.run_config(raw, "cifar10", "mnclglf")
    assert digits.model.width < 1.0 and cifar.model.width == 1.0
