"""Parameters are validated against one typed definition, with one-line messages."""

from __future__ import annotations

import re
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


def test_ablation_and_seed_run_names() -> None:
    raw = config.read_params(ROOT / "params.yaml")
    main = config.run_config(raw, "cifar10", "mnclglf")
    assert config.run_config(raw, "cifar10", "mnclglf-lam4").mnclglf.lam == 4.0
    assert config.run_config(raw, "cifar10", "mnclglf-k3").mnclglf.k == 3
    one = config.run_config(raw, "cifar10", "mnclglf-one")
    assert one.mnclglf.combined_positive == "one" and one.mnclglf.lam == main.mnclglf.lam
    seeded = config.run_config(raw, "cifar10", "mnclglf-lam2-seed5")
    assert (seeded.seed, seeded.mnclglf.lam, seeded.method) == (5, 2.0, "mnclglf-lam2-seed5")
    assert config.base_method("mnclglf-released-seed1") == "mnclglf"
    assert config.run_config(raw, "cifar10", "mnclglf-released-seed1").mnclglf.variant == "released"
    with pytest.raises(UserError, match="mnclglf-k5.*expected one of"):
        config.check_run("mnclglf-k5x")
    with pytest.raises(UserError, match="mnclglf.k = 5"):
        config.run_config(raw, "cifar10", "mnclglf-k5")


@pytest.mark.parametrize("key, value, needle", [
    ("ablations", {"lam": [2, 6]}, "6 is the main run's mnclglf.lam"),
    ("ablations", {"k": [1, 1]}, "listed twice"),
    ("ablations", {"lam": [2.0]}, "write 2, not 2.0"),
    ("ablations", {"k": [1.5]}, "not an integer"),
    ("ablations", {"table5_runs": ["nope"]}, "method = 'nope'"),
    ("repeat_seeds", [0, 1], "repeat_seeds: 0 is `seed`"),
    ("ablation_datasets", ["mnist"], "ablation_datasets: unknown value 'mnist'"),
    ("datasets", ["cifar100"], "ablation_datasets: 'cifar10' is not in `datasets`"),
])
def test_bad_ablation_and_seed_lists(tmp_path: Path, key: str, value: object, needle: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw[key] = value
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=re.escape(needle)):
        config.read_params(tmp_path / "p.yaml")
