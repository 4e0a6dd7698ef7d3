"""Tables 4, 5 and 6 (the ablations) and LaTeX for Table 3, from the metrics files.

Every cell of the paper's Tables 3-6 is a :class:`Cell`: where its number comes from (run
folder, file, key, checkpoint), the paper's number, and what the metrics tree holds for it,
one value per seed. ``verify`` judges the same cells, so the tables and the verdicts can
never disagree on what was compared with what.

Run folders (under ``metrics/<dataset>/``):

* Table 3: ``<method>/linear.json`` (``supervised/supervised.json``);
* Table 4: ``mnclglf-lam<λ>/linear.json``; λ = 6 is the main ``mnclglf`` run;
* Table 5: ``<run>/epochs/linear_e<epoch>.json`` (intermediate encoders) and ``<run>/linear.json``
  (the final one, the last column) for ``nnclr``, ``mnclglf-one``, ``mnclglf``. Our saved
  epochs map to the paper's 50/100/150 by equality when they are those, else by order (the
  smoke profile's 5/10/15 of 20 epochs), decided once per dataset (:func:`column_epochs`);
* Table 6: ``mnclglf-k<k>/linear.json``; k = 2 is the main ``mnclglf`` run.

Seeds: the first seed's run is ``<run>``, seed ``s`` of the others is ``<run>-seed<s>``.
Several seeds give mean ± sample standard deviation, with the per-seed values listed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnclglf.errors import UserError
from mnclglf.paths import KEPT
from mnclglf.io import write_text

TABLE3_ROWS = ["supervised", "mocov2", "simsiam", "simclr", "byol", "nnclr", "fastmoco", "mnclglf"]
TABLE5_RUNS = ["nnclr", "mnclglf-one", "mnclglf"]
ABLATION_PAPER_DATASET = "cifar10"  # Tables 4-6 of the paper are on CIFAR-10
DISPLAY = {
    "supervised": "Supervised", "mocov2": "MoCo V2", "simsiam": "SimSiam", "simclr": "SimCLR", "byol": "BYOL",
    "nnclr": "NNCLR", "fastmoco": "Fast-MoCo", "mnclglf": "MNCLGLF", "mnclglf-one": "MNCLGLF(one embedding)",
    "random-init": "Random init.", "mnclglf-released": "MNCLGLF (released code)",
}
DATASET_DISPLAY = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tinyimagenet": "TinyImageNet", "digits": "digits"}
TITLES = {
    "table3": "Table 3: linear evaluation (top-1/top-5, %)",
    "table4": "Table 4: effect of λ for MNCLGLF (top-1, %)",
    "table5": "Table 5: top-1 (%) of intermediate encoders of the same runs",
    "table6": "Table 6: effect of k, the number of patch embeddings per combination (%)",
}
_EPOCH_FILE = re.compile(r"^linear_e(\d+)\.json$")


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One number of the paper's Tables 3-6 and what the metrics tree holds for it."""

    table: str                 # table3 … table6
    dataset: str               # the dataset our number is on
    row: str                   # method / run / "mnclglf" (Table 4) / str(k) (Table 6)
    column: str                # top1 / top5 (Tables 3, 6), str(λ) (Table 4), str(epoch) (Table 5)
    paper: float | None        # the paper's number (None: the paper has none)
    paper_dataset: str         # the dataset the paper's number is on
    run: str                   # run folder of the first seed
    file: str                  # metrics file name in the run folder ("" for Table 5's checkpoints)
    key: str                   # top1 / top5
    checkpoint: int | None = None   # Table 5: 0-based index of the paper column
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)    # pretraining epoch of each value (when recorded)
    missing_seeds: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def comparable(self) -> bool:
        """Whether ours and the paper's number are on the same dataset (Δ and verdicts make sense)."""
        return self.paper is not None and self.dataset == self.paper_dataset

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None with fewer than two)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def delta(self) -> float | None:
        if not self.comparable or self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "dataset": self.dataset, "row": self.row, "column": self.column,
            "paper": self.paper, "paper_dataset": self.paper_dataset, "comparable": self.comparable,
            "ours": _r(self.mean), "std": _r(self.std), "n": self.n, "seeds": self.seeds,
            "values": [_r(v) for v in self.values], "epochs": self.epochs, "delta": _r(self.delta),
            "files": self.files, "missing_seeds": self.missing_seeds, "note": self.note,
        }


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def load_paper(path: Path | str) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: paper numbers file not found")
    data = yaml.safe_load(path.read_text()) or {}
    for t in ("table3", "table4", "table5", "table6"):
        if t not in data:
            raise UserError(f"{path}: no `{t}` section")
    return data


def _key_sort(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.inf


def _fmt_num(x: Any) -> str:
    """2 → '2', 2.5 → '2.5' (λ and k as they appear in run names and headers)."""
    f = float(x)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def expected_cells(paper: dict[str, Any], datasets: list[str], ablation_dataset: str | None,
                   tables: tuple[str, ...] = ("table3", "table4", "table5", "table6")) -> list[Cell]:
    """Every cell of the paper's tables that a profile reproduces, without values.

    Table 3 is reproduced on each of ``datasets`` that the paper has; a dataset the paper does
    not have (the smoke profile's digits) gets the paper's rows with no paper numbers. Tables
    4-6 are reproduced on ``ablation_dataset``; their paper numbers are CIFAR-10's.
    """
    cells: list[Cell] = []
    t3 = paper.get("table3") or {}
    if "table3" in tables:
        for ds in datasets:
            ref = t3.get(ds)
            rows = sorted(ref or TABLE3_ROWS,
                          key=lambda m: TABLE3_ROWS.index(m) if m in TABLE3_ROWS else len(TABLE3_ROWS))
            for method in rows:
                for key in ("top1", "top5"):
                    cells.append(Cell("table3", ds, method, key, (ref or {}).get(method, {}).get(key),
                                      ds, method,
                                      "supervised.json" if method == "supervised" else "linear.json", key))
    if ablation_dataset is None:
        return cells
    ds = ablation_dataset
    pds = ABLATION_PAPER_DATASET
    if "table4" in tables:
        for lam, val in sorted(paper["table4"].items(), key=lambda kv: _key_sort(kv[0])):
            run = "mnclglf" if float(lam) == 6 else f"mnclglf-lam{_fmt_num(lam)}"
            cells.append(Cell("table4", ds, "mnclglf", _fmt_num(lam), float(val), pds, run, "linear.json", "top1"))
    if "table5" in tables:
        for run in TABLE5_RUNS:
            cols = sorted((paper["table5"].get(run) or {}).items(), key=lambda kv: _key_sort(kv[0]))
            for i, (epoch, val) in enumerate(cols):
                final = i == len(cols) - 1
                cells.append(Cell("table5", ds, run, _fmt_num(epoch), float(val), pds, run,
                                  "linear.json" if final else "", "top1", checkpoint=i))
    if "table6" in tables:
        for k, vals in sorted(paper["table6"].items(), key=lambda kv: _key_sort(kv[0])):
            run = "mnclglf" if float(k) == 2 else f"mnclglf-k{_fmt_num(k)}"
            for key in ("top1", "top5"):
                cells.append(Cell("table6", ds, _fmt_num(k), key, float(vals[key]), pds, run, "linear.json", key))
    return cells


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read metrics ({exc})") from None


def seed_dirs(metrics_root: Path, dataset: str, run: str, seeds: list[int] | None) -> list[tuple[int, Path]]:
    """(seed, folder) of each seed of ``run``: the first seed is ``<run>``, the others ``<run>-seed<s>``.

    ``seeds=None``: the first seed is 0 and the others are whatever ``<run>-seed<s>`` folders exist.
    """
    base = Path(metrics_root) / dataset
    if seeds:
        return [(s, base / (run if i == 0 else f"{run}-seed{s}")) for i, s in enumerate(seeds)]
    out = [(0, base / run)]
    pattern = re.compile(rf"^{re.escape(run)}-seed(\d+)$")
    if base.is_dir():
        extra = sorted(int(m.group(1)) for p in base.iterdir() if p.is_dir() and (m := pattern.match(p.name)))
        out += [(s, base / f"{run}-seed{s}") for s in extra if s != 0]
    return out


def intermediate_epochs(run_dir: Path) -> list[int]:
    """The pretraining epochs of a run folder's Table 5 probes (``<run>/epochs/linear_e<N>.json``)."""
    folder = run_dir / KEPT
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)) and p.is_file())


def column_epochs(metrics_root: Path, dataset: str, runs: list[str], seeds: list[int] | None,
                  paper_epochs: list[int]) -> list[int | None]:
    """Our pretraining epoch behind each of Table 5's intermediate columns (None: no such checkpoint).

    Decided once per dataset over every run and seed, so that one run's missing file leaves its
    cell missing instead of shifting a later checkpoint into that column. When our checkpoints
    include the paper's epochs (the paper profile) they map by equality; otherwise (the smoke
    profile: 5/10/15 of 20) the k-th smallest epoch fills the k-th column.
    """
    found = sorted({e for run in runs for _, d in seed_dirs(metrics_root, dataset, run, seeds)
                    for e in intermediate_epochs(d)})
    if set(paper_epochs) <= set(found):
        return list(paper_epochs)
    return [found[i] if i < len(found) else None for i in range(len(paper_epochs))]


def _variant(run_dir: Path) -> str:
    """The MNCLGLF variant a run folder holds ('' when unrecorded): linear.json's, else pretrain.json's."""
    for name in ("linear.json", "pretrain.json"):
        p = run_dir / name
        if p.is_file():
            try:
                v = json.loads(p.read_text()).get("variant")
            except (OSError, json.JSONDecodeError):
                continue
            if v:
                return str(v)
    return ""


def fill(cells: list[Cell], metrics_root: Path | str, seeds: list[int] | None = None) -> list[Cell]:
    """Read each cell's values (one per seed) from ``metrics_root``; returns ``cells`` filled in."""
    metrics_root = Path(metrics_root)
    # Table 5: the paper's intermediate columns (all but the last) of each dataset → our epochs
    t5 = [c for c in cells if c.table == "table5" and not c.file]
    col_epochs: dict[str, list[int | None]] = {}
    for ds in dict.fromkeys(c.dataset for c in t5):
        cols = sorted({(c.checkpoint or 0, int(float(c.column))) for c in t5 if c.dataset == ds})
        col_epochs[ds] = column_epochs(metrics_root, ds, list(dict.fromkeys(c.run for c in t5)), seeds,
                                       [e for _, e in cols])
    for c in cells:
        c.values, c.seeds, c.files, c.epochs, c.missing_seeds = [], [], [], [], []
        notes: list[str] = []
        expected: list[str] = []
        for seed, run_dir in seed_dirs(metrics_root, c.dataset, c.run, seeds):
            epoch: int | None = None
            if c.table == "table5" and not c.file:
                epoch = col_epochs[c.dataset][c.checkpoint or 0]
                path = run_dir / KEPT / (f"linear_e{epoch}.json" if epoch is not None else "linear_e<none>.json")
            else:
                path = run_dir / c.file
            if not path.is_file():
                c.missing_seeds.append(seed)
                if not expected:
                    expected.append(path.as_posix())
                continue
            if c.table == "table3" and c.row == "mnclglf" and _variant(run_dir) not in ("", "paper"):
                notes.append(f"{run_dir.name} is the {_variant(run_dir)!r} variant, not the paper's")
                c.missing_seeds.append(seed)
                continue
            data = _read_json(path)
            if c.key not in data or data[c.key] is None:
                raise UserError(f"{path}: no `{c.key}` in the metrics file")
            c.values.append(float(data[c.key]))
            c.seeds.append(seed)
            c.files.append(path.as_posix())
            ep = data.get("pretrain_epoch", epoch)
            if ep is not None:
                c.epochs.append(int(ep))
        if c.missing_seeds and c.values:
            notes.append("incomplete: no file for seed " + ", ".join(map(str, c.missing_seeds)))
        elif not c.values and expected and not notes:
            notes.append(f"no {expected[0]}")
        c.note = "; ".join(notes)
    return cells


def collect(metrics_root: Path | str, paper: dict[str, Any], datasets: list[str], ablation_dataset: str | None,
            seeds: list[int] | None = None,
            tables: tuple[str, ...] = ("table3", "table4", "table5", "table6")) -> list[Cell]:
    return fill(expected_cells(paper, datasets, ablation_dataset, tables), metrics_root, seeds)


# ----------------------------------------------------------------------------- formatting


def ours_text(c: Cell, latex: bool = False) -> str:
    if c.n == 0:
        return "--" if latex else "—"
    if c.n == 1:
        return f"{c.values[0]:.2f}"
    pm = r"$\pm$" if latex else "±"
    return f"{c.mean:.2f} {pm} {c.std:.2f}"


def cell_text(c: Cell, latex: bool = False) -> str:
    """'ours (paper, Δ)'; 'ours (ref. paper)' when the datasets differ; '— (paper, missing)' without a file."""
    ours = ours_text(c, latex)
    if c.paper is None:
        return ours
    if not c.comparable:
        return f"{ours} (ref. {c.paper:.2f})"
    if c.n == 0:
        return f"{ours} ({c.paper:.2f}, missing)"
    d = c.delta or 0.0
    dtext = f"${d:+.2f}$" if latex else f"{d:+.2f}"
    return f"{ours} ({c.paper:.2f}, {dtext})"


def _latex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
           "λ": r"$\lambda$", "Δ": r"$\Delta$", "±": r"$\pm$", "—": "--", "–": "--", "−": "$-$", "·": r"$\cdot$"}
    return "".join(rep.get(ch, ch) for ch in s)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _latex_table(header: list[str], rows: list[list[str]], caption: str, label: str,
                 header_is_latex: bool = False, extra_header: list[str] | None = None,
                 align: str | None = None) -> str:
    """A plain ``tabular`` (only \\hline: no package beyond LaTeX itself) in a ``table`` float."""
    align = align or ("l" + "c" * (len(header) - 1))
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + _latex_escape(caption) + "}",
             r"\label{" + label + "}", r"\begin{tabular}{" + align + "}", r"\hline"]
    if extra_header:
        lines += extra_header
    lines.append(" & ".join(header if header_is_latex else [_latex_escape(h) for h in header]) + r" \\")
    lines.append(r"\hline")
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["table", "dataset", "row", "column", "paper_dataset", "paper", "ours", "ours_std", "n_seeds",
              "seeds", "seed_values", "ours_epochs", "delta", "comparable", "files", "note"]


def to_csv(cells: list[Cell]) -> str:
    """Long form, one line per cell (easier to read back than the paper's layout)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    f = (lambda v: "" if v is None else f"{v:.4f}")
    for c in cells:
        w.writerow([c.table, c.dataset, c.row, c.column, c.paper_dataset, "" if c.paper is None else f"{c.paper:.2f}",
                    f(c.mean), f(c.std), c.n, ";".join(map(str, c.seeds)), ";".join(f"{v:.4f}" for v in c.values),
                    ";".join(map(str, c.epochs)), f(c.delta), str(c.comparable).lower(), ";".join(c.files), c.note])
    return buf.getvalue()


def _note(table: str, dataset: str, profile: str, cells: list[Cell]) -> str:
    seeds = max((c.n for c in cells), default=0)
    parts = []
    if any(c.paper is not None and not c.comparable for c in cells):
        parts.append(f"**Reference only.** Ours are on `{dataset}` ({profile} profile); the paper's numbers "
                     f"(in parentheses, 'ref.') are on {DATASET_DISPLAY.get(ABLATION_PAPER_DATASET)}. "
                     "The datasets differ, so there is no Δ and no verdict: this checks the pipeline, "
                     "not the paper's numbers.")
    else:
        parts.append("Each cell: ours (paper, Δ = ours − paper), percentage points.")
    if seeds > 1:
        parts.append("Several seeds: mean ± sample standard deviation; per-seed values below.")
    parts.append("'—': no metrics file for this cell (run its stage).")
    return " ".join(parts)


def _per_seed_lines(cells: list[Cell], label) -> list[str]:  # noqa: ANN001
    lines = [f"- {label(c)}: " + ", ".join(f"{v:.2f} (seed {s})" for s, v in zip(c.seeds, c.values))
             for c in cells if c.n > 1]
    return (["", "Per-seed values:", ""] + lines) if lines else []


def _sources(cells: list[Cell]) -> list[str]:
    runs = list(dict.fromkeys(c.run for c in cells))
    return ["", "Run folders (first seed): " + ", ".join(f"`{r}`" for r in runs) + "."]


def _caption(name: str, profile: str, cs: list[Cell]) -> str:
    if cs and not cs[0].comparable:
        return (f"{TITLES[name]}, {profile} profile: ours on {cs[0].dataset}; in parentheses the paper's "
                f"{DATASET_DISPLAY.get(cs[0].paper_dataset, cs[0].paper_dataset)} number, for reference only "
                "(other dataset, no Δ)")
    return f"{TITLES[name]}, {profile} profile: ours (paper, Δ = ours − paper)"


def table4(cells: list[Cell], profile: str, fmt: str) -> str:
    cs = [c for c in cells if c.table == "table4"]
    cols = [c.column for c in cs]
    header = ["λ", *cols]
    if fmt == "latex":
        body = [["MNCLGLF", *[cell_text(c, latex=True) for c in cs]]]
        cap = _caption("table4", profile, cs)
        return _latex_table([r"$\lambda$", *cols], body, cap, "tab:ablation-lambda", header_is_latex=True)
    ds = cs[0].dataset if cs else ""
    lines = [f"# {TITLES['table4']} — {profile} profile", "", _note("table4", ds, profile, cs), ""]
    lines += _md_table(header, [["MNCLGLF", *[cell_text(c) for c in cs]]])
    lines += _per_seed_lines(cs, lambda c: f"λ={c.column}")
    lines += _sources(cs) + ["λ = 6 is the main `mnclglf` run (shared with Tables 3, 5, 6)."]
    return "\n".join(lines) + "\n"


def _table5_columns(cs: list[Cell]) -> list[tuple[int, str, str]]:
    """(checkpoint index, paper epoch, label) of Table 5's columns; the label names our epoch when it differs."""
    out = []
    for i in sorted({c.checkpoint or 0 for c in cs}):
        col = [c for c in cs if c.checkpoint == i]
        paper_epoch = col[0].column
        ours = sorted({e for c in col for e in c.epochs})
        label = f"{paper_epoch}e"
        if ours and ours != [int(float(paper_epoch))]:
            label += " (ours " + "/".join(f"{e}e" for e in ours) + ")"
        out.append((i, paper_epoch, label))
    return out


def table5(cells: list[Cell], profile: str, fmt: str) -> str:
    cs = [c for c in cells if c.table == "table5"]
    cols = _table5_columns(cs)
    rows = []
    for run in TABLE5_RUNS:
        rc = {c.checkpoint: c for c in cs if c.row == run}
        if rc:
            rows.append((run, [rc.get(i) for i, _, _ in cols]))
    header = ["Methods", *[label for _, _, label in cols]]
    if fmt == "latex":
        body = [[_latex_escape(DISPLAY.get(run, run)), *[cell_text(c, latex=True) if c else "" for c in rcs]]
                for run, rcs in rows]
        cap = _caption("table5", profile, cs)
        return _latex_table(header, body, cap, "tab:ablation-epochs")
    ds = cs[0].dataset if cs else ""
    lines = [f"# {TITLES['table5']} — {profile} profile", "", _note("table5", ds, profile, cs),
             "The k-th saved encoder of our run fills the paper's k-th column (the last column is the final "
             "encoder, `linear.json`); our epoch is in parentheses where it differs from the paper's.", ""]
    lines += _md_table(header, [[DISPLAY.get(run, run), *[cell_text(c) if c else "" for c in rcs]]
                                for run, rcs in rows])
    lines += _per_seed_lines(cs, lambda c: f"{DISPLAY.get(c.row, c.row)} {c.column}e")
    lines += _sources(cs)
    return "\n".join(lines) + "\n"


def table6(cells: list[Cell], profile: str, fmt: str) -> str:
    cs = [c for c in cells if c.table == "table6"]
    ks = sorted({c.row for c in cs}, key=_key_sort)
    by = {(c.row, c.column): c for c in cs}
    if fmt == "latex":
        body = [[k, cell_text(by[(k, "top1")], latex=True), cell_text(by[(k, "top5")], latex=True)] for k in ks]
        cap = _caption("table6", profile, cs)
        return _latex_table(["$k$", "top-1", "top-5"], body, cap, "tab:ablation-k", header_is_latex=True)
    ds = cs[0].dataset if cs else ""
    lines = [f"# {TITLES['table6']} — {profile} profile", "", _note("table6", ds, profile, cs), ""]
    lines += _md_table(["k", "top-1", "top-5"], [[k, cell_text(by[(k, "top1")]), cell_text(by[(k, "top5")])]
                                                 for k in ks])
    lines += _per_seed_lines(cs, lambda c: f"k={c.row} {c.column}")
    lines += _sources(cs) + ["k = 2 is the main `mnclglf` run (shared with Tables 3-5)."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Table 3 in LaTeX


def table3_latex(csv_text: str, profile: str) -> str:
    """Table 3 (from ``results/<profile>/table3.csv``) in the paper's layout: methods × (dataset × top-1/top-5)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    if not rows:
        raise UserError("table3.csv has no rows")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods: list[tuple[str, str]] = list(dict.fromkeys((r["method"], r.get("variant") or "") for r in rows))
    by = {(r["dataset"], r["method"], r.get("variant") or ""): r for r in rows}
    extra = [" & " + " & ".join(r"\multicolumn{2}{c}{" + _latex_escape(DATASET_DISPLAY.get(d, d)) + "}"
                                for d in datasets) + r" \\"]
    header = ["Methods", *(["top-1", "top-5"] * len(datasets))]
    body = []
    for method, variant in methods:
        name = DISPLAY.get(method, method)
        if variant not in ("", "paper"):
            name += f" ({variant})"
        cells = []
        for d in datasets:
            r = by.get((d, method, variant))
            for k in ("top1", "top5"):
                if r is None or not r.get(k):
                    cells.append("")
                    continue
                ours = float(r[k])
                p = r.get(f"paper_{k}") or ""
                cells.append(f"{ours:.2f}" if not p else f"{ours:.2f} ({float(p):.2f}, ${ours - float(p):+.2f}$)")
        body.append([_latex_escape(name), *cells])
    note = "" if any((r.get("paper_top1") or "") for r in rows) else " (the paper has no numbers for this dataset)"
    return _latex_table(header, body, f"{TITLES['table3']}, ours (paper, Δ), {profile} profile{note}",
                        "tab:linear-eval", extra_header=extra)


# ----------------------------------------------------------------------------- entry point


def write_all_tables(metrics_root: Path | str, profile_name: str, profile_datasets: list[str],
                     ablation_dataset: str | None, paper_path: Path | str, out_dir: Path | str,
                     seeds: list[int] | None = None) -> dict[str, Any]:
    """Write Tables 4-6 (``.md``, ``.csv``, ``.tex``) and ``table3.tex`` into ``out_dir``.

    ``table3.tex`` is made from ``out_dir/table3.csv`` (written by ``mnclglf tabulate``); when
    that file is absent it is skipped and named in the result's ``skipped``. Returns
    ``{"written": [paths], "skipped": [reasons], "cells": [Cell]}``.
    """
    out_dir = Path(out_dir)
    paper = load_paper(paper_path)
    cells = collect(metrics_root, paper, profile_datasets, ablation_dataset, seeds,
                    tables=("table4", "table5", "table6"))
    written: list[Path] = []
    skipped: list[str] = []
    for name, render in (("table4", table4), ("table5", table5), ("table6", table6)):
        cs = [c for c in cells if c.table == name]
        for ext, fmt in (("md", "md"), ("tex", "latex")):
            write_text(out_dir / f"{name}.{ext}", render(cells, profile_name, fmt))
            written.append(out_dir / f"{name}.{ext}")
        write_text(out_dir / f"{name}.csv", to_csv(cs))
        written.append(out_dir / f"{name}.csv")
    t3 = out_dir / "table3.csv"
    if t3.is_file():
        write_text(out_dir / "table3.tex", table3_latex(t3.read_text(), profile_name))
        written.append(out_dir / "table3.tex")
    else:
        skipped.append(f"{t3} not found (run `mnclglf tabulate --profile {profile_name}` first): no table3.tex")
    return {"written": written, "skipped": skipped, "cells": cells}
