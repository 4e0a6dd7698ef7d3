"""`mnclglf fidelity`: the paper-vs-released table is generated from the parameters and cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnclglf import config
from mnclglf.cli import main
from mnclglf.report import fidelity

ROOT = Path(__file__).resolve().parents[1]
RAW = config.read_params(ROOT / "params.yaml")


def test_at_least_ten_differences_each_a_parameter_of_config() -> None:
    rows = fidelity.fidelity_rows(RAW)
    assert sum(r["differs"] for r in rows) >= 10
    known = fidelity.all_parameters()
    for d in fidelity.REGISTRY:
        assert d.param in known, f"{d.param} is not a field of config.py"
        assert d.paper and d.released and d.effect
    assert len({d.param for d in fidelity.REGISTRY}) == len(fidelity.REGISTRY)


@pytest.mark.parametrize("dataset", ["cifar10", "digits"])
def test_every_parameter_that_differs_is_explained(dataset: str) -> None:
    assert fidelity.undocumented(RAW, dataset) == []


def test_values_come_from_the_two_runs() -> None:
    rows = {r["param"]: r for r in fidelity.fidelity_rows(RAW)}
    assert (rows["mnclglf.loss_s_grad"]["paper"], rows["mnclglf.loss_s_grad"]["released"]) == (True, False)
    assert (rows["augment.size"]["paper"], rows["augment.size"]["released"]) == (0, 224)
    assert rows["mnclglf.lam"]["differs"] is False and rows["mnclglf.lam"]["released"] == 6.0
    digits = {r["param"]: r for r in fidelity.fidelity_rows(RAW, "digits")}
    assert digits["augment.size"]["released"] == 32


def test_cli_prints_the_table_and_the_markdown() -> None:
    res = CliRunner().invoke(main, ["fidelity", "--params", str(ROOT / "params.yaml")], terminal_width=240)
    assert res.exit_code == 0, res.output
    n = int(re.search(r"\((\d+) differences", res.output).group(1))
    assert n >= 10 and all(d.param in res.output for d in fidelity.REGISTRY)
    res = CliRunner().invoke(main, ["fidelity", "--markdown", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + len(fidelity.REGISTRY)


def test_docs_table_is_the_generated_one() -> None:
    docs = [ROOT / "docs" / name for name in ("FIDELITY.md",)]
    table = fidelity.to_markdown(fidelity.fidelity_rows(RAW))
    assert any(p.is_file() and table in p.read_text() for p in docs), "regenerate: mnclglf fidelity --markdown"


def test_profile_hook_keys_are_exempt_only_where_the_hook_sets_them() -> None:
    assert {"pretrain.batch_size", "pretrain.lr", "augment.size"} <= fidelity.profile_hook_keys(RAW, "digits")
    assert fidelity.profile_hook_keys(RAW, "cifar10") == set()
    raw = {**RAW, "mnclglf-released": {**RAW["mnclglf-released"],
                                        "pretrain": {**RAW["mnclglf-released"]["pretrain"], "momentum": 0.5}}}
    assert fidelity.undocumented(raw, "cifar10") == ["pretrain.momentum"]
