"""Compare every reproduced cell of Tables 3-6 with the paper: pass, fail or missing.

A cell **passes** when |ours − paper| ≤ T percentage points, or, when several seeds exist,
when |mean − paper| ≤ 2 · (sample std over seeds); i.e. the threshold is max(T, 2·std).
It **fails** otherwise. It is **missing** when the paper has the cell and no metrics file
for it exists: a missing cell is never a pass, and it makes ``ok`` false (the CLI exits 1).
Cells whose number is on another dataset than the paper's (the smoke profile's digits) get
**n/a** when present (no Δ is meaningful) and **missing** when absent: the smoke profile
checks that the pipeline produced every cell, not the paper's numbers.

``verify`` writes ``verdict.json`` (every cell and its verdict) into ``out_dir``.

Above the cells, the paper's claims (``claims.yaml`` beside ``paper.yaml``) are judged from the same
cells by :mod:`mnclglf.report.claims`: held / not held / not decidable / missing, with the mean
difference and its standard error; they go into ``verdict.json`` and ``claims.md``. A profile of
separate short runs (``profiles.<p>.epochs``: the quick profile) has no paper cells: its cells are
its runs' probes (present: n/a, absent: missing), judged through the claims only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mnclglf import config
from mnclglf.errors import UserError
from mnclglf.io import write_json, write_text
from mnclglf.report import claims as claimlib
from mnclglf.report.ablations import ABLATION_PAPER_DATASET, Cell, collect, fill, load_paper

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


def claims_path(paper_path: Path | str) -> Path:
    """The claims file: ``claims.yaml`` beside the paper's numbers."""
    return Path(paper_path).with_name("claims.yaml")


def _cells(metrics_root: Path | str, paper: dict[str, Any], claims: list[dict[str, Any]],
           datasets: list[str], ablation_dataset: str | None, seeds: list[int] | None,
           short: dict[str, Any] | None) -> tuple[list[Cell], dict[str, Cell]]:
    """(the cells judged one by one, every cell a claim may name by its key), filled in."""
    if short is not None:
        index = claimlib.short_cells(claims, datasets[0], int(short["epochs"]), list(short["runs"]))
        return fill(list(index.values()), metrics_root, None), index
    cells = collect(metrics_root, paper, list(datasets), ablation_dataset, seeds)
    released = claimlib.released_cells(list(datasets))  # keyed released/<dataset>/<key>, as claims.yaml
    fill(list(released.values()), metrics_root, seeds)
    return cells, {**{claimlib.cell_key(c): c for c in cells}, **released}


def verify(metrics_root: Path | str, paper_path: Path | str, tolerance: float, profile: str = "paper", *,
           datasets: list[str] | None = None, ablation_dataset: str | None = None,
           seeds: list[int] | None = None, out_dir: Path | str | None = None,
           short: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Judge every cell of Tables 3-6 for ``profile``; returns (cells as dicts with a ``verdict``, ok).

    ``datasets``: Table 3's datasets (default: the paper's for ``paper``, digits for ``smoke``);
    ``ablation_dataset``: Tables 4-6's (default: CIFAR-10, digits for ``smoke``); ``seeds``: the
    seed list of params (None: ``<run>`` plus any ``<run>-seed<s>`` folders). ``short``: a
    short-run profile's ``epochs`` and ``runs`` (the quick profile). ``out_dir``: where
    ``verdict.json`` and ``claims.md`` go (None: not written). The claims: :func:`judge_all`.
    """
    out, ok, _ = judge_all(metrics_root, paper_path, tolerance, profile, datasets=datasets,
                           ablation_dataset=ablation_dataset, seeds=seeds, out_dir=out_dir,
                           short=short)
    return out, ok


CELL_RULE = ("pass: |ours - paper| <= max(tolerance, 2*std over seeds when n >= 2); "
             "missing: no metrics file for a cell the paper has (never a pass); "
             "n/a: ours is on another dataset than the paper's (smoke profile), or a short run "
             "(quick profile: judged through the claims only)")
CLAIM_RULE = (f"held: every comparison's difference exceeds {claimlib.Z:g} SE; one seed: "
              "SE = sqrt(2)*sigma, sigma the seed-to-seed spread of that metric on the profile "
              "(none measured: not decidable); not held: one comparison fails by more than its "
              "noise; missing: all cells missing")


def judge_all(metrics_root: Path | str, paper_path: Path | str, tolerance: float, profile: str, *,
              datasets: list[str] | None = None, ablation_dataset: str | None = None,
              seeds: list[int] | None = None, out_dir: Path | str | None = None,
              short: dict[str, Any] | None = None
              ) -> tuple[list[dict[str, Any]], bool, list[dict[str, Any]]]:
    """(cell verdicts, ok, claim verdicts) of ``profile``; writes verdict.json and claims.md."""
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: must be >= 0")
    paper = load_paper(paper_path)
    datasets = list(datasets or DEFAULT_DATASETS.get(profile, list(paper["table3"])))
    if ablation_dataset is None and short is None:
        ablation_dataset = DEFAULT_ABLATION.get(profile, ABLATION_PAPER_DATASET)
    cfile = claims_path(paper_path)
    claims = claimlib.load_claims(cfile) if cfile.is_file() else []
    cells, index = _cells(metrics_root, paper, claims, datasets, ablation_dataset, seeds, short)
    out: list[dict[str, Any]] = []
    for c in cells:
        verdict, threshold = ("n/a" if c.n else "missing", None) if short else judge(c, tolerance)
        d = c.as_dict()
        d.update(verdict=verdict, threshold=None if threshold is None else round(threshold, 4))
        out.append(d)
    counts = {v: sum(1 for d in out if d["verdict"] == v) for v in VERDICTS}
    ok = counts["fail"] == 0 and counts["missing"] == 0 and bool(out)
    judged = claimlib.judge_claims(claims, index, paper, datasets, short is not None)
    sigmas = claimlib.spreads(list(index.values()))
    if out_dir is not None:
        pipeline = any(d not in paper["table3"] for d in datasets)
        write_text(Path(out_dir) / "claims.md",
                   claimlib.claims_markdown(judged, profile, sigmas, pipeline))
        write_json(Path(out_dir) / "verdict.json", {
            "profile": profile, "tolerance": tolerance, "ok": ok, "counts": counts,
            "rule": CELL_RULE,
            "datasets": list(datasets), "ablation_dataset": ablation_dataset,
            "short_runs": short is not None, "cells": out, "claim_rule": CLAIM_RULE,
            "seed_spread": {k: None if s is None else round(s, 4) for k, (s, _) in sigmas.items()},
            "claims_file": cfile.as_posix() if claims else None, "claims": judged,
            "claim_counts": {v: sum(1 for c in judged if c["verdict"] == v)
                             for v in claimlib.CLAIM_VERDICTS},
        })
    return out, ok, judged


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
    short = None
    if prof.get("epochs"):  # separate short runs (quick): judged through the claims only
        short = {"epochs": prof["epochs"], "runs": list(prof.get("runs") or [])}
    return {"datasets": datasets, "ablation_dataset": None if short else ablation,
            "results": Path(prof.get("results", "results")), "seeds": seeds, "short": short}


def print_claims(judged: list[dict[str, Any]]) -> None:
    """The claim verdicts as a rich table: the verdict and the comparison deciding it."""
    from rich.console import Console
    from rich.table import Table

    if not judged:
        return
    colour = {"held": "green", "not held": "red", "not decidable": "yellow", "missing": "yellow",
              "not checked": "dim"}
    table = Table(title="The paper's claims (held only when Δ exceeds 2 SE)")
    for col in ("claim", "verdict", "evidence (mean Δ, SE)", "paper's numbers"):
        table.add_column(col, overflow="fold")
    for c in judged:
        v = c["verdict"]
        table.add_row(c["id"], f"[{colour[v]}]{v}[/]", c["evidence"], c["paper_support"])
    Console().print(table)


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
    """Judge the paper's claims, compare each reproduced cell with the paper; exit 1 if a cell
    fails or is missing."""
    s = profile_settings(config.read_params(params_file), profile)
    out = Path(out_dir) if out_dir else s["results"]
    cells, ok, judged = judge_all(Path(metrics_root), Path(paper_file), tolerance, profile,
                                  datasets=s["datasets"], ablation_dataset=s["ablation_dataset"],
                                  seeds=s["seeds"], out_dir=out, short=s["short"])
    print_claims(judged)
    print_report(cells, ok, tolerance, out / "verdict.json")
    if not ok:
        ctx.exit(1)
