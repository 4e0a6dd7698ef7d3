"""`mnclglf verify`: every cell of Tables 3-6 against the paper, on synthetic metrics trees.

The trees are built from results/paper.yaml itself (a perfect reproduction), then a value
is moved (a planted deviation) or a file removed (a missing cell).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mnclglf.report.ablations import load_paper
from mnclglf.report.verify import judge, verify, verify_command

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "results" / "paper.yaml"
N_CELLS = 3 * 8 * 2 + 5 + 3 * 4 + 4 * 2  # Table 3 + Table 4 + Table 5 + Table 6


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def build_tree(root: Path, paper: dict[str, Any] | None = None, *, datasets: list[str] | None = None,
               ablation_dataset: str = "cifar10", offset: float = 0.0, seed_offsets: dict[int, float] | None = None,
               epochs: tuple[int, ...] = (50, 100, 150, 200)) -> Path:
    """A metrics tree whose every cell equals the paper's (+ ``offset``), under ``root``.

    ``datasets``: Table 3's datasets (default the paper's); a dataset the paper lacks gets the
    paper's CIFAR-10 values. ``seed_offsets``: {seed: offset} adds ``<run>-seed<s>`` folders
    (seed 0 is ``<run>``). ``epochs``: Table 5's checkpoints; the last is the final encoder.
    """
    paper = paper or load_paper(PAPER)
    datasets = datasets or list(paper["table3"])
    seed_offsets = seed_offsets or {0: 0.0}
    for i, (seed, so) in enumerate(sorted(seed_offsets.items())):
        suffix = "" if i == 0 else f"-seed{seed}"
        off = offset + so

        def lin(ds: str, run: str, top1: float, top5: float = 99.0, fname: str = "linear.json",
                epoch: int = epochs[-1], suffix: str = suffix, off: float = off) -> None:
            _write(root / ds / f"{run}{suffix}" / fname,
                   {"dataset": ds, "method": run, "top1": top1 + off, "top5": top5 + off, "pretrain_epoch": epoch})

        for ds in dict.fromkeys([*datasets, ablation_dataset]):
            ref = paper["table3"].get(ds) or paper["table3"]["cifar10"]
            for method, v in ref.items():
                if method == "supervised":
                    _write(root / ds / f"supervised{suffix}" / "supervised.json",
                           {"top1": v["top1"] + off, "top5": v["top5"] + off})
                else:
                    lin(ds, method, v["top1"], v["top5"])
                    _write(root / ds / f"{method}{suffix}" / "pretrain.json",
                           {"method": method, "variant": "paper", "epochs": epochs[-1]})
        ds = ablation_dataset
        for lam, v in paper["table4"].items():
            if lam != 6:
                lin(ds, f"mnclglf-lam{lam}", v)
        for run, cols in paper["table5"].items():
            for (_, v), ep in zip(sorted(cols.items()), epochs):
                if ep == epochs[-1]:
                    if run == "mnclglf-one":
                        lin(ds, run, v)
                else:
                    lin(ds, run, v, fname=f"epochs/linear_e{ep}.json", epoch=ep)
        for k, v in paper["table6"].items():
            if k != 2:
                lin(ds, f"mnclglf-k{k}", v["top1"], v["top5"])
    return root


def _params(tmp_path: Path, smoke: bool = False) -> Path:
    p = tmp_path / "params.yaml"
    profiles = {"smoke": {"datasets": ["digits"], "results": str(tmp_path / "results" / "smoke")},
                "paper": {"datasets": ["cifar10", "cifar100", "tinyimagenet"], "results": str(tmp_path / "results")}}
    p.write_text(yaml.safe_dump({"seed": 0, "profiles": profiles}))
    return p


def _run_cli(tmp_path: Path, metrics: Path, *extra: str) -> Any:
    return CliRunner().invoke(verify_command, ["--metrics", str(metrics), "--paper", str(PAPER),
                                               "--params", str(_params(tmp_path)), *extra])


def test_within_tolerance_exits_zero(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics", offset=0.4)
    res = _run_cli(tmp_path, metrics, "--tolerance", "0.5")
    assert res.exit_code == 0, res.output
    verdict = json.loads((tmp_path / "results" / "verdict.json").read_text())
    assert verdict["ok"] is True
    assert len(verdict["cells"]) == N_CELLS
    assert {c["verdict"] for c in verdict["cells"]} == {"pass"}
    assert {c["table"] for c in verdict["cells"]} == {"table3", "table4", "table5", "table6"}
    assert all(abs(c["delta"] - 0.4) < 1e-6 for c in verdict["cells"])


def test_planted_deviation_exits_nonzero(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics")
    f = metrics / "cifar10" / "mnclglf-k3" / "linear.json"
    d = json.loads(f.read_text())
    d["top1"] -= 2.5
    f.write_text(json.dumps(d))
    res = _run_cli(tmp_path, metrics, "--tolerance", "1")
    assert res.exit_code == 1, res.output
    assert "fail" in res.output and "k=3" in res.output
    verdict = json.loads((tmp_path / "results" / "verdict.json").read_text())
    bad = [c for c in verdict["cells"] if c["verdict"] != "pass"]
    assert [(c["table"], c["row"], c["column"], c["verdict"]) for c in bad] == [("table6", "3", "top1", "fail")]
    assert bad[0]["delta"] == pytest.approx(-2.5)


def test_missing_cell_is_never_a_pass(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics")
    (metrics / "cifar10" / "mnclglf-lam8" / "linear.json").unlink()
    (metrics / "tinyimagenet" / "byol" / "linear.json").unlink()
    (metrics / "cifar10" / "nnclr" / "epochs" / "linear_e100.json").unlink()
    res = _run_cli(tmp_path, metrics, "--tolerance", "100")  # any value would pass
    assert res.exit_code == 1, res.output
    assert "missing" in res.output
    verdict = json.loads((tmp_path / "results" / "verdict.json").read_text())
    missing = {(c["table"], c["dataset"], c["row"], c["column"]) for c in verdict["cells"]
               if c["verdict"] == "missing"}
    # Table 5's columns are fixed per dataset (50/100/150 here): a run's missing 100-epoch file is
    # that cell missing, not its 150-epoch encoder shifted into the 100e column.
    assert missing == {("table4", "cifar10", "mnclglf", "8"), ("table3", "tinyimagenet", "byol", "top1"),
                       ("table3", "tinyimagenet", "byol", "top5"), ("table5", "cifar10", "nnclr", "100")}
    assert verdict["counts"]["missing"] == len(missing)
    assert verdict["ok"] is False


def test_empty_tree_is_all_missing(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    cells, ok = verify(tmp_path / "metrics", PAPER, 1.0)
    assert not ok and len(cells) == N_CELLS and {c["verdict"] for c in cells} == {"missing"}


def test_seeds_two_std_rule(tmp_path: Path) -> None:
    # seeds 0, 1, 2 at +0.5, +1.5, +2.5: mean +1.5, sample std 1.0; tolerance 0.5 < 1.5 <= 2·std
    metrics = build_tree(tmp_path / "metrics", seed_offsets={0: 0.5, 1: 1.5, 2: 2.5})
    cells, ok = verify(metrics, PAPER, 0.5, seeds=[0, 1, 2])
    assert ok
    c = next(c for c in cells if c["table"] == "table4" and c["column"] == "2")
    assert c["n"] == 3 and c["seeds"] == [0, 1, 2]
    assert c["delta"] == pytest.approx(1.5) and c["std"] == pytest.approx(1.0) and c["threshold"] == pytest.approx(2.0)
    # one seed only: the 2·std rule does not apply, 0.5 pp it is
    cells, ok = verify(metrics, PAPER, 0.5, seeds=[0])
    assert ok  # seed 0 alone is +0.5
    cells, ok = verify(metrics, PAPER, 0.5, seeds=[1])  # the first listed seed is the plain <run> folder
    assert ok
    # seeds discovered from the folders when params list none
    cells, _ = verify(metrics, PAPER, 0.5)
    assert all(c["n"] == 3 for c in cells)


def test_incomplete_seeds_noted(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics", seed_offsets={0: 0.0, 1: 0.0})
    cells, ok = verify(metrics, PAPER, 0.5, seeds=[0, 1, 2])
    assert ok  # judged on the seeds present...
    assert all(c["missing_seeds"] == [2] and "incomplete" in c["note"] for c in cells)  # ...but said so


def test_smoke_profile_checks_presence_only(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics", datasets=["digits"], ablation_dataset="digits", offset=-30.0,
                         epochs=(5, 10, 15, 20))
    cells, ok = verify(metrics, PAPER, 0.1, "smoke", out_dir=tmp_path)
    assert ok, [c for c in cells if c["verdict"] != "n/a"]
    assert {c["verdict"] for c in cells} == {"n/a"} and all(c["delta"] is None for c in cells)
    t5 = [c for c in cells if c["table"] == "table5" and c["row"] == "mnclglf"]
    assert [c["epochs"] for c in t5] == [[5], [10], [15], [20]]
    (metrics / "digits" / "mnclglf-k1" / "linear.json").unlink()
    cells, ok = verify(metrics, PAPER, 0.1, "smoke")
    assert not ok and sum(c["verdict"] == "missing" for c in cells) == 2


def test_released_variant_does_not_stand_for_the_paper(tmp_path: Path) -> None:
    metrics = build_tree(tmp_path / "metrics")
    _write(metrics / "cifar100" / "mnclglf" / "pretrain.json", {"method": "mnclglf", "variant": "released"})
    cells, ok = verify(metrics, PAPER, 1.0)
    bad = [c for c in cells if c["verdict"] != "pass"]
    assert not ok and {(c["dataset"], c["row"], c["verdict"]) for c in bad} == {("cifar100", "mnclglf", "missing")}
    assert "released" in bad[0]["note"]


def test_judge_rounding_edge() -> None:
    from mnclglf.report.ablations import Cell

    c = Cell("table4", "cifar10", "mnclglf", "2", 89.33, "cifar10", "mnclglf-lam2", "linear.json", "top1",
             values=[90.33])
    assert judge(c, 1.0) == ("pass", 1.0)
    c.values = [90.34]
    assert judge(c, 1.0)[0] == "fail"


def test_unknown_profile_is_one_line_error(tmp_path: Path) -> None:
    res = _run_cli(tmp_path, tmp_path, "--tolerance", "1", "--profile", "nope")
    assert res.exit_code != 0
    assert "nope" in str(res.exception) or "nope" in res.output
