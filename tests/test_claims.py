"""The paper's claims judged by `mnclglf verify` on planted metrics trees, and the quick profile.

The trees start from results/paper.yaml (a perfect reproduction, tests/test_verify.py), get seeds
with a small per-cell jitter, then one claim per table is planted: held (Table 3), not
decidable on one seed inside the measured seed-to-seed spread (Table 4), not held (Table 5),
missing (Table 6).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mnclglf import config, doctor
from mnclglf.errors import UserError
from mnclglf.report import claims as claimlib
from mnclglf.report.tables import table3_rows
from mnclglf.report.verify import judge_all, verify_command
from test_verify import PAPER, REPO, _write, build_tree

SEEDS = {0: 0.0, 1: 0.0, 2: 0.0}


def jitter(root: Path, scale: float, seed: int = 0) -> None:
    """Add N(0, scale) to every top-1/top-5 of the tree: a real profile's seed-to-seed noise."""
    rng = random.Random(seed)
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text())
        for key in ("top1", "top5"):
            if key in data:
                data[key] += rng.gauss(0.0, scale)
        path.write_text(json.dumps(data))


def ablations_one_seed(root: Path) -> None:
    """As the pipeline runs them: Tables 4-6's runs and Table 5's snapshots on one seed only."""
    for d in root.glob("*/*-seed*"):
        if config.ablation_keys(config.split_seed(d.name)[0]):
            shutil.rmtree(d)
        elif (d / "epochs").is_dir():
            shutil.rmtree(d / "epochs")


def set_top1(root: Path, rel: str, value: float) -> None:
    path = root / rel
    data = json.loads(path.read_text())
    data["top1"] = value
    path.write_text(json.dumps(data))


def _cli(metrics: Path, params: Path, *extra: str) -> Any:
    args = ["--metrics", str(metrics), "--paper", str(PAPER), "--params", str(params)]
    return CliRunner().invoke(verify_command, [*args, "--tolerance", "1.0", *extra])


def by_id(judged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in judged}


def _judge(metrics: Path, out: Path, profile: str = "paper", **kw: Any) -> list[dict[str, Any]]:
    return judge_all(metrics, PAPER, 1.0, profile, out_dir=out, **kw)[2]


def test_one_claim_per_table_held_not_decidable_not_held_missing(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "m", seed_offsets=SEEDS)
    ablations_one_seed(metrics)  # Table 3 has 3 seeds, Tables 4-6 one
    jitter(metrics, 0.5)
    for epoch in (50, 100, 150):  # Table 5: one embedding planted 5 points below NNCLR
        nnclr = json.loads((metrics / f"cifar10/nnclr/epochs/linear_e{epoch}.json").read_text())
        set_top1(metrics, f"cifar10/mnclglf-one/epochs/linear_e{epoch}.json", nnclr["top1"] - 5)
    for k in (1, 3, 4):  # Table 6: the k runs were never run
        for p in (metrics / "cifar10" / f"mnclglf-k{k}").iterdir():
            p.unlink()
    judged = by_id(_judge(metrics, tmp_path / "out", seeds=[0, 1, 2]))
    sigma = json.loads((tmp_path / "out" / "verdict.json").read_text())["seed_spread"]["top1"]
    assert 0.2 < sigma < 0.9  # measured from Table 3's three seeds

    t3 = judged["t3-outperforms"]
    assert t3["verdict"] == "held" and len(t3["comparisons"]) == 18
    assert all(c["basis"] == "3 seeds" and c["se"] > 0 for c in t3["comparisons"])
    assert all(c["delta"] > 2 * c["se"] for c in t3["comparisons"])
    # Table 4, one seed: λ = 6 beats λ = 8 by 0.92 in the paper, inside 2·√2·σ here
    t4 = judged["t4-lambda-6-best"]
    assert t4["verdict"] == "not decidable", t4["evidence"]
    assert all(c["basis"].startswith("one seed") for c in t4["comparisons"])
    assert any(abs(c["delta"]) < 2 * c["se"] for c in t4["comparisons"])
    assert judged["t5-one-faster-than-nnclr"]["verdict"] == "not held"
    assert judged["t6-k1-below"]["verdict"] == "missing"
    assert judged["t6-more-embeddings-decrease"]["verdict"] == "missing"
    assert judged["t3-local-features"]["verdict"] == "missing"  # no released run in the tree
    md = (tmp_path / "out" / "claims.md").read_text()
    for verdict in ("held", "not held", "not decidable", "missing"):
        assert f"**{verdict}**" in md


def test_released_reading_is_read_for_the_local_features_claim(tmp_path: Path) -> None:
    """The paper reading against the released one: a planted released run is found, not missing."""
    metrics = build_tree(tmp_path / "m", seed_offsets=SEEDS)
    jitter(metrics, 0.5)
    for ds in ("cifar10", "cifar100", "tinyimagenet"):
        for s, suffix in ((0, ""), (1, "-seed1"), (2, "-seed2")):
            mn = json.loads((metrics / f"{ds}/mnclglf{suffix}/linear.json").read_text())
            _write(metrics / ds / f"mnclglf-released{suffix}" / "linear.json",
                   {**mn, "top1": mn["top1"] - 6 + 0.2 * s, "variant": "released"})
    claim = by_id(_judge(metrics, tmp_path / "out", seeds=[0, 1, 2]))["t3-local-features"]
    assert claim["verdict"] == "held", claim["evidence"]
    assert all(c["b"].startswith("released/") and c["delta"] > 5 for c in claim["comparisons"])


def test_several_seeds_inside_the_noise_are_not_decidable(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "m", seed_offsets=SEEDS)
    jitter(metrics, 1.5, seed=3)
    base = json.loads((metrics / "cifar10" / "mnclglf" / "linear.json").read_text())["top1"]
    for s, suffix in ((0, ""), (1, "-seed1"), (2, "-seed2")):  # NNCLR 0.1 below MNCLGLF on average
        mn = json.loads((metrics / f"cifar10/mnclglf{suffix}/linear.json").read_text())["top1"]
        set_top1(metrics, f"cifar10/nnclr{suffix}/linear.json", mn - 0.1 + (1.5, -1.5, 0.0)[s])
    judged = by_id(_judge(metrics, tmp_path / "out", seeds=[0, 1, 2]))
    comps = judged["t3-outperforms"]["comparisons"]
    comp = next(c for c in comps if c["b"] == "table3/cifar10/nnclr/top1")
    assert comp["verdict"] == "not decidable" and abs(comp["delta"] - 0.1) < 1e-6
    assert comp["se"] > 0.5
    assert judged["t3-outperforms"]["verdict"] == "not decidable"
    assert base > 0


def test_one_seed_everywhere_is_never_held(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "m")
    judged = _judge(metrics, tmp_path / "out")
    assert {c["verdict"] for c in judged} == {"not decidable", "missing"}
    assert "No σ was measured here" in (tmp_path / "out" / "claims.md").read_text()


def test_paper_numbers_column_shows_the_papers_own_50_epoch_exception(tmp_path: Path) -> None:
    judged = by_id(_judge(build_tree(tmp_path / "m"), tmp_path / "out"))
    assert judged["t5-more-positives-faster"]["paper_support"] == "2/3"
    assert judged["t3-outperforms"]["paper_support"] == "18/18"
    assert judged["t5-mnclglf-100-matches-nnclr-200"]["paper_support"] == "1/1"
    assert judged["t3-local-features"]["paper_support"] == "—"


def test_within_relation_is_an_equivalence_test() -> None:
    assert claimlib.compare("within", 1.0, 0.1, 0.2) == "held"
    assert claimlib.compare("within", 1.0, 0.1, 0.6) == "not decidable"
    assert claimlib.compare("within", 1.0, 2.5, 0.2) == "not held"
    assert claimlib.compare("greater", 0.0, 0.3, None) == "not decidable"
    assert claimlib.claim_verdict(["held", "missing"]) == "not decidable"


def test_cli_prints_claims_with_mean_difference_and_se(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "m", seed_offsets=SEEDS)
    jitter(metrics, 0.3)
    p = tmp_path / "params.yaml"
    paper = {"datasets": ["cifar10", "cifar100", "tinyimagenet"], "results": str(tmp_path / "r")}
    p.write_text(yaml.safe_dump({"seed": 0, "repeat_seeds": [1, 2], "profiles": {"paper": paper}}))
    res = _cli(metrics, p)
    assert "t3-outperforms" in res.output and "SE" in res.output and "Δ" in res.output
    verdict = json.loads((tmp_path / "r" / "verdict.json").read_text())
    assert verdict["claim_counts"]["held"] >= 1
    assert verdict["claims"][0]["comparisons"][0]["se"] is not None


def test_smoke_claims_are_a_pipeline_check(tmp_path: Path) -> None:
    from mnclglf.report.summary import write_summary

    metrics = build_tree(tmp_path / "m", datasets=["digits"], ablation_dataset="digits")
    out = tmp_path / "results" / "smoke"
    judged = _judge(metrics, out, "smoke")
    assert len(judged) == 13 and not any(c["id"].startswith("q-") for c in judged)
    assert "**Pipeline check.**" in (out / "claims.md").read_text()
    page = write_summary(metrics, "smoke", ["digits"], "digits", out).read_text()
    assert "## The paper's claims" in page and "t3-outperforms" in page
    assert "**Pipeline check**: no claim is the paper's" in page


# ----------------------------------------------------------------------------- the quick profile


def quick_tree(root: Path, planted: dict[str, float]) -> Path:
    for run, top1 in planted.items():
        _write(root / "cifar10" / run / "linear.json",
               {"top1": top1, "top5": 99.0, "pretrain_epoch": 50})
    return root


def test_quick_profile_judges_its_claims_and_names_the_others(tmp_path: Path) -> None:
    raw = config.read_params(REPO / "params.yaml")
    metrics = quick_tree(tmp_path / "m", {"nnclr-e50": 72.0, "nnclr-e50-seed1": 72.4,
                                          "mnclglf-e50": 80.2, "mnclglf-e50-seed1": 80.0,
                                          "mnclglf-one-e50": 80.1})
    p = tmp_path / "params.yaml"
    quick = {**raw["profiles"]["quick"], "results": str(tmp_path / "q")}
    p.write_text(yaml.safe_dump({**raw, "profiles": {**raw["profiles"], "quick": quick}}))
    res = _cli(metrics, p, "--profile", "quick")
    assert res.exit_code == 1  # the released run is missing
    verdict = json.loads((tmp_path / "q" / "verdict.json").read_text())
    judged = by_id(verdict["claims"])
    assert judged["q-mnclglf-ahead-of-nnclr-early"]["verdict"] == "held"
    assert judged["q-mnclglf-ahead-of-nnclr-early"]["comparisons"][0]["basis"] == "2 seeds"
    assert judged["q-one-ahead-of-nnclr-early"]["verdict"] == "held"  # one seed, σ from repeats
    assert judged["q-more-positives-early"]["verdict"] == "not decidable"  # 0.0 apart on average
    assert judged["q-paper-vs-released-early"]["verdict"] == "missing"
    assert judged["t4-lambda-6-best"]["verdict"] == "not checked"
    assert "200-epoch runs of Table 4" in judged["t4-lambda-6-best"]["evidence"]
    assert {c["verdict"] for c in verdict["cells"]} == {"n/a", "missing"}
    assert all(c["paper"] is None for c in verdict["cells"])  # not compared with Table 5's numbers
    assert table3_rows(metrics, ["cifar10"], {"table3": {}}) == []  # short runs: not Table 3


def test_quick_runs_are_the_dvc_stages_and_fit_an_hour() -> None:
    raw = config.read_params(REPO / "params.yaml")
    runs = doctor.profile_runs(raw, "quick")
    names = ("nnclr-e50", "mnclglf-e50", "mnclglf-released-e50", "mnclglf-one-e50",
             "nnclr-e50-seed1", "mnclglf-e50-seed1")
    assert runs == [("cifar10", r) for r in names]
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tabulate-quick"]
    assert [d for d in stage["deps"] if d.startswith("metrics/")] == [
        f"metrics/{d}/{r}/linear.json" for d, r in runs]
    for _, run in runs:
        cfg = config.run_config(raw, "cifar10", run)
        assert cfg.pretrain.epochs == 50 and cfg.pretrain.keep_epochs == ()
    assert config.run_config(raw, "cifar10", "mnclglf-released-e50").mnclglf.variant == "released"
    assert config.run_config(raw, "cifar10", "mnclglf-one-e50").mnclglf.combined_positive == "one"
    assert config.run_config(raw, "cifar10", "nnclr-e50-seed1").seed == 1
    quick = doctor.projected(raw, "quick", REPO / doctor.FLOPS_FILE)
    assert quick.detail.startswith("projected on one H100: ") and " min " in quick.detail
    assert int(quick.detail.split(": ")[1].split(" min")[0]) <= 60
    # the same arithmetic gives docs/RESOURCES.md's 6.6 H100-hours for the paper profile
    assert "6.6 h" in doctor.projected(raw, "paper", REPO / doctor.FLOPS_FILE).detail


def test_doctor_quick_prints_its_estimate_without_a_gpu() -> None:
    rows = {r.name: r for r in doctor.run_doctor(str(REPO / "params.yaml"), "quick", bench=False)}
    assert rows["projected time"].detail.startswith("projected on one H100")


@pytest.mark.parametrize("name", ["mnclglf-e50x", "e50", "nnclr-e0"])
def test_bad_short_run_names_are_refused(name: str) -> None:
    raw = config.read_params(REPO / "params.yaml")
    with pytest.raises(UserError):
        config.run_config(raw, "cifar10", name)


def test_report_smoke_writes_the_claim_table_that_make_smoke_prints(tmp_path: Path) -> None:
    from mnclglf.report.summary import report_command

    metrics = build_tree(tmp_path / "m", datasets=["digits"], ablation_dataset="digits")
    out = tmp_path / "results" / "smoke"
    p = tmp_path / "params.yaml"
    smoke = {"datasets": ["digits"], "results": str(out)}
    p.write_text(yaml.safe_dump({"seed": 0, "profiles": {"smoke": smoke}}))
    args = ["--metrics", str(metrics), "--runs", str(tmp_path / "runs"), "--params", str(p)]
    res = CliRunner().invoke(report_command, ["--profile", "smoke", *args, "--paper", str(PAPER)])
    assert res.exit_code == 0, res.output
    assert f"claims: {out / 'claims.md'}" in res.output
    text = (out / "claims.md").read_text()
    assert text.startswith("# The paper's claims — smoke profile") and "**Pipeline check.**" in text
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nsmoke: install\n")[1].split("\n\n")[0]
    assert recipe.splitlines()[-1].strip() == "@cat results/smoke/claims.md"
