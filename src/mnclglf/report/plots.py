"""PNG plots of a profile's runs (matplotlib, headless), written under ``<results>/plots/``.

* ``pretrain_<dataset>.png``: pretraining loss per epoch, one panel per method (the losses of
  different methods are on different scales);
* ``collapse_<dataset>.png``: the collapse monitor, embedding std per epoch divided by its
  first-epoch value, all methods in one panel (a line falling towards 0 is a collapse);
* ``linear_<dataset>.png``: the linear probe's train top-1 per epoch, all evaluated encoders;
* ``table5.png``: Table 5's top-1 against the checkpoint, ours (solid) and the paper's (dashed);
* ``table3_<dataset>.png``: ours against the paper's top-1 per method (no paper bar where the
  paper has no number; error bars = std over seeds).

DVCLive's TSV curves live in ``runs/<dataset>/<run>/{pretrain,linear}/live/plots/metrics/``;
:func:`dvc_plots_section` prints the matching ``plots:`` section of ``dvc.yaml``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from mnclglf.report.ablations import DISPLAY, TABLE3_ROWS, TABLE5_RUNS, Cell, collect, load_paper

RUN_ORDER = [*TABLE3_ROWS, "mnclglf-released", "mnclglf-one", "random-init"]


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_tsv(path: Path) -> tuple[list[float], list[float]]:
    """(steps, values) of a DVCLive TSV (columns ``step`` and the metric; extra columns ignored)."""
    xs: list[float] = []
    ys: list[float] = []
    with path.open() as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            return xs, ys
        name = [h for h in header if h not in ("step", "timestamp")]
        col = header.index(name[0]) if name else len(header) - 1
        si = header.index("step") if "step" in header else None
        for i, row in enumerate(reader):
            if len(row) <= col:
                continue
            try:
                y = float(row[col])
                x = float(row[si]) if si is not None else float(i)
            except ValueError:
                continue
            xs.append(x)
            ys.append(y)
    return xs, ys


def _curve(runs_root: Path, dataset: str, run: str, stage: str, metric: str) -> Path:
    return runs_root / dataset / run / stage / "live" / "plots" / "metrics" / f"{metric}.tsv"


def _runs_with(runs_root: Path, dataset: str, stage: str, metric: str) -> list[str]:
    base = runs_root / dataset
    if not base.is_dir():
        return []
    found = [p.name for p in base.iterdir() if _curve(runs_root, dataset, p.name, stage, metric).is_file()]
    order = {r: i for i, r in enumerate(RUN_ORDER)}
    return sorted(found, key=lambda r: (order.get(r, len(order)), r))


def _label(run: str) -> str:
    return DISPLAY.get(run, run)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)
    return path


def plot_pretrain(runs_root: Path, dataset: str, out_dir: Path) -> list[Path]:
    """Loss per method (small multiples) and the collapse monitor (all methods)."""
    plt = _pyplot()
    written = []
    runs = _runs_with(runs_root, dataset, "pretrain", "loss")
    if runs:
        ncol = min(4, len(runs))
        nrow = math.ceil(len(runs) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax, run in zip(axes.flat, runs):
            x, y = read_tsv(_curve(runs_root, dataset, run, "pretrain", "loss"))
            ax.plot(x, y, lw=1.5)
            for part, style in (("loss_s", ":"), ("loss_m", "--")):
                p = _curve(runs_root, dataset, run, "pretrain", part)
                if p.is_file():
                    px, py = read_tsv(p)
                    ax.plot(px, py, style, lw=1, label=part)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            ax.set_title(_label(run), fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(runs):]:
            ax.set_visible(False)
        fig.suptitle(f"Pretraining loss — {dataset}", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"pretrain_{dataset}.png"))
        plt.close(fig)
    runs = _runs_with(runs_root, dataset, "pretrain", "embedding_std")
    if runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for run in runs:
            x, y = read_tsv(_curve(runs_root, dataset, run, "pretrain", "embedding_std"))
            if y and y[0]:
                ax.plot(x, [v / y[0] for v in y], label=_label(run), lw=1.4)
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("embedding std / first epoch's")
        ax.set_title(f"Collapse monitor — {dataset} (towards 0 = collapse)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"collapse_{dataset}.png"))
        plt.close(fig)
    return written


def plot_linear(runs_root: Path, dataset: str, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    runs = _runs_with(runs_root, dataset, "linear", "train_top1")
    if not runs:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in runs:
        x, y = read_tsv(_curve(runs_root, dataset, run, "linear", "train_top1"))
        ax.plot(x, y, label=_label(run), lw=1.4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train top-1 (%)")
    ax.set_title(f"Linear evaluation, training accuracy — {dataset}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = _save(fig, out_dir / f"linear_{dataset}.png")
    plt.close(fig)
    return [path]


def plot_table5(cells: list[Cell], out_dir: Path, profile: str) -> list[Path]:
    cs = [c for c in cells if c.table == "table5"]
    if not cs:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    cols = sorted({c.checkpoint or 0 for c in cs})
    labels = {c.checkpoint: f"{c.column}e" for c in cs}
    for i, run in enumerate(TABLE5_RUNS):
        rc = sorted((c for c in cs if c.row == run), key=lambda c: c.checkpoint or 0)
        if not rc:
            continue
        color = f"C{i}"
        ax.plot([c.checkpoint for c in rc], [c.paper for c in rc], "--", color=color, alpha=0.6,
                label=f"{_label(run)} (paper{'' if rc[0].comparable else ', ' + rc[0].paper_dataset})")
        have = [c for c in rc if c.n]
        if have:
            ax.errorbar([c.checkpoint for c in have], [c.mean for c in have],
                        yerr=[c.std or 0.0 for c in have], fmt="-o", color=color, ms=4, capsize=3,
                        label=f"{_label(run)} (ours, {have[0].dataset})")
    ax.set_xticks(cols, [labels[i] for i in cols])
    ax.set_xlabel("checkpoint (paper's epochs; ours: k-th saved encoder)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"Table 5: accuracy against training epochs — {profile} profile", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = _save(fig, out_dir / "table5.png")
    plt.close(fig)
    return [path]


def plot_table3(cells: list[Cell], out_dir: Path, profile: str) -> list[Path]:
    plt = _pyplot()
    written = []
    cs = [c for c in cells if c.table == "table3" and c.column == "top1"]
    for dataset in dict.fromkeys(c.dataset for c in cs):
        dc = [c for c in cs if c.dataset == dataset and (c.n or c.paper is not None)]
        if not any(c.n for c in dc):
            continue
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(dc) + 1.5), 3.6))
        w = 0.38
        for i, c in enumerate(dc):
            if c.n:
                ax.bar(i - w / 2, c.mean, w, yerr=c.std if c.std else None, color="C0", capsize=3,
                       label="ours" if i == 0 or "ours" not in ax.get_legend_handles_labels()[1] else None)
            if c.paper is not None:
                ax.bar(i + w / 2, c.paper, w, color="C1",
                       label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
        ax.set_xticks(range(len(dc)), [_label(c.row) for c in dc], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.8, len(dc) - 0.2)
        ax.set_ylabel("top-1 (%)")
        note = "" if any(c.paper is not None for c in dc) else " (the paper has no numbers for this dataset)"
        ax.set_title(f"Table 3, {dataset}: reproduced vs paper{note}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"table3_{dataset}.png"))
        plt.close(fig)
    return written


def write_plots(metrics_root: Path | str, runs_root: Path | str, profile_name: str, profile_datasets: list[str],
                ablation_dataset: str | None, paper_path: Path | str, out_dir: Path | str,
                seeds: list[int] | None = None, cells: list[Cell] | None = None) -> list[Path]:
    """Every plot of a profile into ``out_dir`` (``<results>/plots``); returns the files written."""
    out_dir = Path(out_dir)
    runs_root = Path(runs_root)
    if cells is None:
        cells = collect(metrics_root, load_paper(paper_path), list(profile_datasets), ablation_dataset, seeds)
    written: list[Path] = []
    for ds in dict.fromkeys([*profile_datasets, *([ablation_dataset] if ablation_dataset else [])]):
        written += plot_pretrain(runs_root, ds, out_dir)
        written += plot_linear(runs_root, ds, out_dir)
    written += plot_table3(cells, out_dir, profile_name)
    if any(c.table == "table5" and c.n for c in cells):
        written += plot_table5(cells, out_dir, profile_name)
    return written


def dvc_plots_section(datasets: list[str], pretrain_runs: list[str], eval_runs: list[str],
                      png_dirs: list[str]) -> str:
    """The ``plots:`` section of dvc.yaml over the DVCLive TSVs (one plot per dataset and curve) and the PNGs."""
    lines = ["plots:"]
    for ds in datasets:
        for stage, metric, runs, title in (("pretrain", "loss", pretrain_runs, "pretraining loss"),
                                           ("pretrain", "embedding_std", pretrain_runs,
                                            "collapse monitor (embedding std)"),
                                           ("linear", "train_top1", eval_runs, "linear probe, train top-1 (%)")):
            lines += [f"  - {metric}-{ds}:" if stage == "pretrain" else f"  - linear-{metric}-{ds}:",
                      f"      title: {ds} {title}", "      template: linear", "      x: step", "      y:"]
            lines += [f"        runs/{ds}/{r}/{stage}/live/plots/metrics/{metric}.tsv: {metric}" for r in runs]
    for d in png_dirs:
        lines.append(f"  - {d}/")
    return "\n".join(lines) + "\n"
