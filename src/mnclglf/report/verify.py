"""Compare every reproduced cell of Tables 3-6 with the paper: pass, fail or missing.

A cell **passes** when |ours − paper| ≤ T percentage points, or, when several seeds exist,
when |mean − paper| ≤ 2 · (sample std over seeds); i.e. the threshold is max(T, 2·std).
It **fails** otherwise. It is **missing** when the paper has the cell and no metrics file
for it exists: a missing cell is never a pass, and it makes ``ok`` false (the CLI exits 1).
Cells whose number is on another dataset than the paper's (the smoke profile's digits) get
**n/a** when present (no Δ is meaningful) and **missing** when absent: the smoke profile
checks that the pipeline produced every cell, not the paper's numbers.

``verify`` writes ``verdict.json`` (every cell and its verdict) into ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mnclglf import config
from mnclglf.errors import UserError
from mnclglf.io import write_json
from mnclglf.report.ablations import ABLATION_PAPER_DATASET, Cell, collect, load_paper

VERDICTS = ("pass", "fail", "missing", "n/a")
DEFAULT_DATASETS = {"smoke": ["digits"]}
DEFAULT_ABLATION = {"smoke": "digits"}


def judge(cell: Cell, tolerance: float) -> tuple[str, float | None]:
    """(verdict, threshold used) of one cell."""
    if cell.n == 0:
        return ("missing" if cell.paper is not None or cell.table == "table3" else "n/a"), None
    if not cell.comparable:
        return "n/a", None
    threshold = tolerance
    if cell.n > 1 and cell.std is not None:
        threshold = max(tolerance, 2.0 * cell.std)
    delta = cell.delta
    assert delta is not None
    return ("pass" if abs(delta) <= threshold + 1e-9 else "fail"), threshold


def verify(metrics_root: Path | str, paper_path: Path | str, tolerance: float, profile: str = "paper", *,
           datasets: list[str] | None = None, ablation_dataset: str | None = None,
           seeds: list[int] | None = None, out_dir: Path | str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Judge every cell of Tables 3-6 for ``profile``; returns (cells as dicts with a ``verdict``, ok).

    ``datasets``: Table 3's datasets (default: the paper's for ``paper``, digits for ``smoke``);
    ``ablation_dataset``: Tables 4-6's (default: CIFAR-10, digits for ``smoke``); ``seeds``: the
    seed list of params (None: ``<run>`` plus any ``<run>-seed<s>`` folders). ``out_dir``:
    where ``verdict.json`` goes (None: not written).
    """
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: must be >= 0")
    paper = load_paper(paper_path)
    if datasets is None:
        datasets = DEFAULT_DATASETS.get(profile, list(paper["table3"]))
    if ablation_dataset is None:
        ablation_dataset = DEFAULT_ABLATION.get(profile, ABLATION_PAPER_DATASET)
    cells = collect(metrics_root, paper, list(datasets), ablation_dataset, seeds)
    out: list[dict[str, Any]] = []
    for c in cells:
        verdict, threshold = judge(c, tolerance)
        d = c.as_dict()
        d.update(verdict=verdict, threshold=None if threshold is None else round(threshold, 4))
        out.append(d)
    counts = {v: sum(1 for d in out if d["verdict"] == v) for v in VERDICTS}
    ok = counts["fail"] == 0 and counts["missing"] == 0 and bool(out)
    if out_dir is not None:
        write_json(Path(out_dir) / "verdict.json", {
            "profile": profile, "tolerance": tolerance, "ok": ok, "counts": counts,
            "rule": "pass: |ours - paper| <= max(tolerance, 2*std over seeds when n >= 2); "
                    "missing: no metrics file for a cell the paper has (never a pass); "
                    "n/a: ours is on another dataset than the paper's (smoke profile)",
            "datasets": list(datasets), "ablation_dataset": ablation_dataset,
            "cells": out,
        })
    return out, ok


def _label(d: dict[str, Any]) -> str:
    t = d["table"]
    if t == "table3":
        return f"{d['dataset']} {d['row']} {d['column']}"
    if t == "table4":
        return f"λ={d['column']}"
    if t == "table5":
        return f"{d['row']} {d['column']}e"
    return f"k={d['row']} {d['column']}"


def print_report(cells: list[dict[str, Any]], ok: bool, tolerance: float, verdict_path: Path | None = None) -> None:
    """The offending cells (fail / missing) as a rich table, then one summary line."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    bad = [d for d in cells if d["verdict"] in ("fail", "missing")]
    if bad:
        table = Table(title=f"Cells off the paper (tolerance {tolerance:g} pp)")
        for col in ("table", "cell", "ours", "paper", "Δ", "allowed", "verdict", "note"):
            table.add_column(col, justify="right" if col in ("ours", "paper", "Δ", "allowed") else "left")
        for d in bad:
            ours = "—" if d["ours"] is None else (f"{d['ours']:.2f}" if d["n"] < 2 else f"{d['ours']:.2f} ± {d['std']:.2f}")
            style = "red" if d["verdict"] == "fail" else "yellow"
            table.add_row(d["table"], _label(d), ours, "" if d["paper"] is None else f"{d['paper']:.2f}",
                          "" if d["delta"] is None else f"{d['delta']:+.2f}",
                          "" if d["threshold"] is None else f"{d['threshold']:.2f}",
                          f"[{style}]{d['verdict']}[/{style}]", d["note"])
        console.print(table)
    incomplete = [d for d in cells if d["missing_seeds"] and d["n"] > 0]
    for d in incomplete:
        console.print(f"[yellow]warning[/yellow]: {d['table']} {_label(d)}: no file for seed(s) "
                      f"{', '.join(map(str, d['missing_seeds']))}; judged on {d['n']} seed(s)")
    counts = {v: sum(1 for d in cells if d["verdict"] == v) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    where = f" → {verdict_path}" if verdict_path else ""
    if ok:
        console.print(f"[green]OK[/green]: {len(cells)} cells: {summary}{where}")
    else:
        console.print(f"[red]NOT REPRODUCED[/red]: {len(cells)} cells: {summary}{where}")


def profile_settings(raw: dict[str, Any], profile: str) -> dict[str, Any]:
    """datasets, ablation_dataset, results folder and seeds of ``profile`` from the params."""
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise UserError(f"--profile {profile!r}: not in params `profiles`; allowed: {', '.join(profiles)}")
    prof = profiles[profile] or {}
    datasets = list(prof.get("datasets") or [])
    if not datasets:
        raise UserError(f"profiles.{profile}.datasets: empty")
    ablation = prof.get("ablation_dataset") or (ABLATION_PAPER_DATASET if ABLATION_PAPER_DATASET in datasets
                                                else datasets[0])
    seeds = config.seeds(raw)
    return {"datasets": datasets, "ablation_dataset": ablation, "results": Path(prof.get("results", "results")),
            "seeds": seeds}


@click.command("verify")
@click.option("--tolerance", required=True, type=click.FloatRange(min=0), metavar="T",
              help="Largest |ours − paper| that passes, in percentage points (or 2·std over seeds, if larger).")
@click.option("--profile", default="paper", show_default=True, help="Profile to check (a key of `profiles`).")
@click.option("--paper", "paper_file", default="results/paper.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The paper's numbers.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for verdict.json (default: the profile's results folder).")
@click.option("--metrics", "metrics_root", default="metrics", show_default=True, type=click.Path(file_okay=False),
              help="Metrics tree to read.")
@click.option("--params", "params_file", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Parameter file (the profile) to read.")
@click.pass_context
def verify_command(ctx: click.Context, tolerance: float, profile: str, paper_file: str, out_dir: str | None,
                   metrics_root: str, params_file: str) -> None:
    """Compare every reproduced cell of Tables 3-6 with the paper; exit 1 if any fails or is missing."""
    s = profile_settings(config.read_params(params_file), profile)
    out = Path(out_dir) if out_dir else s["results"]
    cells, ok = verify(Path(metrics_root), Path(paper_file), tolerance, profile, datasets=s["datasets"],
                       ablation_dataset=s["ablation_dataset"], seeds=s["seeds"], out_dir=out)
    print_report(cells, ok, tolerance, out / "verdict.json")
    if not ok:
        ctx.exit(1)
