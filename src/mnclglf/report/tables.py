"""Table 3 from the metrics files: ours beside the paper's, as CSV, Markdown and a rich table.

A variant run (``metrics/<dataset>/mnclglf-released/``) is a row of its method
(``mnclglf``) with its variant (``released``) and no paper numbers: the paper's numbers
belong to the paper's reading. A note under the Markdown table says what the released
variant is.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from mnclglf.config import VARIANT_RUNS, ablation_keys, split_epochs, split_seed
from mnclglf.errors import UserError
from mnclglf.io import write_text

TABLE3_HEADER = ["dataset", "method", "variant", "top1", "top5", "paper_top1", "paper_top5"]
ROW_ORDER = ["supervised", "mocov2", "simsiam", "simclr", "byol", "nnclr", "fastmoco", "mnclglf", "random-init"]


def load_paper(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: paper numbers file not found")
    return yaml.safe_load(path.read_text())


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read metrics ({exc})") from None


def table3_rows(metrics_root: Path, datasets: list[str], paper: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (dataset, method[, variant]) found under ``metrics_root``, in the paper's order.

    Ablation runs (Tables 4-6), repeat seeds (``<run>-seed<s>``, aggregated by ``mnclglf
    report``) and the quick profile's separate short runs (``<run>-e<N>``) are not rows of
    Table 3.
    """
    rows = []
    for dataset in datasets:
        base = metrics_root / dataset
        if not base.is_dir():
            raise UserError(f"{base}: no results for dataset {dataset!r}; run its pretrain and linear-eval stages")
        for run_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            method = run_dir.name
            short = split_epochs(split_seed(method)[0])[1] is not None
            if ablation_keys(method) or split_seed(method)[1] is not None or short:
                continue
            result_file = run_dir / ("supervised.json" if method == "supervised" else "linear.json")
            if not result_file.is_file():
                continue
            res = _read(result_file)
            pre = run_dir / "pretrain.json"
            extra = _read(pre) if pre.is_file() else {}
            method = res.get("method", method)
            variant = res.get("variant") or extra.get("variant") or ""
            if method in VARIANT_RUNS:  # metrics written before the payload named the base method
                method, variant = VARIANT_RUNS[method][0], variant or VARIANT_RUNS[method][1]
            ref = (paper.get("table3", {}).get(dataset, {}) or {}).get(method, {})
            if variant not in ("", "paper"):
                ref = {}
            rows.append({
                "dataset": dataset, "method": method, "variant": variant,
                "top1": res["top1"], "top5": res["top5"],
                "paper_top1": ref.get("top1"), "paper_top5": ref.get("top5"),
                "embedding_std_min_ratio": extra.get("embedding_std_min_ratio"),
                "loss_s_grad": (extra.get("mnclglf") or {}).get("loss_s_grad"),
            })
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), order.get(r["method"], len(order)), r["variant"]))
    return rows


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE3_HEADER)
    for r in rows:
        writer.writerow([r["dataset"], r["method"], r["variant"], _fmt(r["top1"]), _fmt(r["top5"]),
                         _fmt(r["paper_top1"]), _fmt(r["paper_top5"])])
    return buf.getvalue()


def _cell(ours: float, paper: float | None) -> str:
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} ({paper:.2f}, {ours - paper:+.2f})"


def variant_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per variant shown in the table (today: MNCLGLF ``released``)."""
    released = [r for r in rows if r["method"] == "mnclglf" and r["variant"] == "released"]
    if not released:
        return []
    trains = any(r.get("loss_s_grad") for r in released)
    grad = ("run with `loss_s_grad: true`: loss_s trains, everything else is the released code"
            if trains else "its loss_s carries no gradient (the predictions are detached), so only λ·loss_m trains "
            "the network")
    return [f"`mnclglf` / `released`: MNCLGLF as the authors' released code runs it (docs/FIDELITY.md, "
            f"`mnclglf fidelity`); {grad}. It has no paper numbers: the paper's row is the `paper` variant."]


def to_markdown(rows: list[dict[str, Any]], title: str, note: str) -> str:
    note = "\n\n".join([note, *variant_notes(rows)])
    lines = [f"# {title}", "", note, "",
             "| dataset | method | variant | top-1 ours (paper, Δ) | top-5 ours (paper, Δ) | collapse monitor (min/initial) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r["embedding_std_min_ratio"] is None else f"{r['embedding_std_min_ratio']:.2f}"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['variant']} | {_cell(r['top1'], r['paper_top1'])} | "
                     f"{_cell(r['top5'], r['paper_top5'])} | {ratio} |")
    return "\n".join(lines) + "\n"


def tabulate(metrics_root: Path, datasets: list[str], paper_path: Path, out_dir: Path, profile: str
             ) -> tuple[list[dict[str, Any]], Path]:
    paper = load_paper(paper_path)
    rows = table3_rows(metrics_root, datasets, paper)
    if not rows:
        raise UserError(f"no results under {metrics_root} for {', '.join(datasets)}")
    note = ("Bundled `digits` data on the CPU profile: the paper columns are empty because the paper has no "
            "numbers for this dataset; these rows check the pipeline, not the paper."
            if profile == "smoke" else "Linear evaluation, top-1/top-5 percent on the test split "
            "(TinyImageNet: its validation set). Paper numbers from Table 3.")
    write_text(out_dir / "table3.csv", to_csv(rows))
    write_text(out_dir / "table3.md", to_markdown(rows, f"Table 3 ({profile} profile)", note))
    return rows, out_dir / "table3.csv"
