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


def test_ablation_stages_cover_tables_4_to_6_without_repeating_the_main_run(stages: dict) -> None:
    raw = config.read_params(ROOT / "params.yaml")
    abl, main = raw["ablations"], raw["mnclglf"]
    for ds in raw["ablation_datasets"]:
        runs = ([f"mnclglf-lam{v}" for v in abl["lam"]] + [f"mnclglf-k{v}" for v in abl["k"]] + ["mnclglf-one"])
        pretrained = {str(o.def_path).split("/")[2] for name, s in stages.items()
                      if name.startswith(("pretrain-lam@", "pretrain-k@", "pretrain-one@")) and f"@{ds}" in name
                      for o in s.outs if str(o.def_path).endswith("/pretrain")}
        assert pretrained == set(runs)
        assert f"mnclglf-lam{main['lam']:g}" not in pretrained and f"mnclglf-k{main['k']}" not in pretrained
        for run in runs:
            assert config.run_config(raw, ds, run).pretrain.epochs == config.run_config(raw, ds, "mnclglf").pretrain.epochs
        for run in abl["table5_runs"]:  # Table 5 probes the same runs' kept encoders, not shorter runs
            deps = {str(d.def_path) for d in stages[f"linear-eval-epochs@{ds}-{run}"].deps}
            assert f"runs/{ds}/{run}/pretrain" in deps
            assert config.run_config(raw, ds, run).pretrain.keep_epochs
    # every pretraining output folder belongs to exactly one stage
    outs = [str(o.def_path) for s in stages.values() for o in s.outs if str(o.def_path).endswith("/pretrain")]
    assert len(outs) == len(set(outs))
    assert "mnclglf" in param_keys(stages["pretrain-lam@cifar10-2"])
    assert not any(name.startswith(("pretrain-repeat@", "linear-eval-repeat@")) for name in stages)  # one seed


def test_repeat_seeds_add_one_run_per_seed(tmp_path: Path) -> None:
    dvc_repo = pytest.importorskip("dvc.repo")
    import shutil

    import yaml

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["repeat_seeds"] = [7]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / ".dvc").mkdir()
    with dvc_repo.Repo(str(tmp_path), uninitialized=True) as repo:
        names = {s.name for s in repo.index.stages}
    assert "pretrain-repeat@cifar10-mnclglf-7" in names and "linear-eval-repeat@cifar10-mnclglf-7" in names
    assert "supervised-repeat@cifar10-7" in names
    assert config.run_config(raw, "cifar10", "mnclglf-seed7").seed == 7


def test_dvc_plots_section_matches_the_runs() -> None:
    import yaml

    from mnclglf.report.plots import dvc_plots_section

    raw = config.read_params(ROOT / "params.yaml")
    want = yaml.safe_load(dvc_plots_section(raw["datasets"], raw["methods"], raw["eval_methods"],
                                            ["results/smoke/plots", "results/plots"]))
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] == want["plots"]
