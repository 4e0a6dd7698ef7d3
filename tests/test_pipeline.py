"""dvc.yaml: every run of Table 3 is a stage, and each stage depends on exactly the parameters it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnclglf import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> dict:
    dvc_repo = pytest.importorskip("dvc.repo")
    with dvc_repo.Repo(str(ROOT)) as repo:
        return {s.addressing: s for s in repo.index.stages}


def param_keys(stage) -> set[str]:
    keys: set[str] = set()
    for dep in stage.deps:
        if type(dep).__name__ == "ParamsDependency":
            keys |= set(dep.params)
    return keys


def test_every_table3_run_is_a_stage(stages: dict) -> None:
    raw = config.read_params(ROOT / "params.yaml")
    ssl = [m for m in raw["methods"]]
    assert set(config.SSL_METHODS) <= {m.split("-")[0] for m in ssl}
    for dataset in raw["profiles"]["paper"]["datasets"]:
        for method in config.SSL_METHODS:
            assert f"pretrain@{dataset}-{method}" in stages
            assert f"linear-eval@{dataset}-{method}" in stages
        assert f"supervised@{dataset}" in stages
        assert f"download@{dataset}" in stages
    assert "tabulate" in stages and "tabulate-smoke" in stages
    assert "download@digits" in stages


def test_lambda_reruns_pretrain_and_linear_lr_does_not(stages: dict) -> None:
    pre = param_keys(stages["pretrain@cifar10-mnclglf"])
    lin = param_keys(stages["linear-eval@cifar10-mnclglf"])
    assert "mnclglf" in pre and "pretrain" in pre
    assert not any(k.startswith("linear_eval") for k in pre)
    assert "linear_eval" in lin
    assert not ({"pretrain", "mnclglf", "model", "augment"} & lin)
    # linear-eval depends on the pretrained encoder, so a λ change reaches it through the data.
    deps = {str(d.def_path) for d in stages["linear-eval@cifar10-mnclglf"].deps}
    assert "runs/cifar10/mnclglf/pretrain" in deps


def test_dvc_config_is_offline() -> None:
    text = (ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in text and "check_update = false" in text
