"""``<results>/summary.md``: the page a reviewer reads first, and the ``mnclglf report`` command.

What was run (the run folders found, their method and variant, seeds, epochs), on which
hardware (from the ``env_<stage>.json`` environment records next to the metrics), how long
it took (wall time and GPU-hours per table, summed from those records), the verdicts of the
paper's claims and of the cells (from ``verify``) and links to the tables and plots.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from mnclglf.config import split_epochs, split_seed
from mnclglf.errors import UserError
from mnclglf.io import write_text
from mnclglf.paths import KEPT
from mnclglf.report.ablations import DISPLAY, TABLE3_ROWS, intermediate_epochs

SMOKE_BANNER = ("**Bundled digits data; this checks the pipeline, not the paper's numbers.** The smoke profile "
                "runs every stage on scikit-learn's 8×8 digits on the CPU with a tiny network and a short "
                "schedule. Its accuracies are not comparable with the paper's CIFAR/TinyImageNet numbers, "
                "which are printed beside them for reference only; no cell is judged against the paper.")
KEPT_STAGE = "linear_epochs"  # the stage name of Table 5's probes of the intermediate encoders


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def table_of(run: str, stage: str) -> str:
    """Which table a run's stage is for (a run shared by several tables counts for the first)."""
    if split_epochs(run)[1] is not None:
        return "quick profile"
    if run.startswith("mnclglf-lam"):
        return "Table 4"
    if run.startswith("mnclglf-k"):
        return "Table 6"
    if run == "mnclglf-one" or stage == KEPT_STAGE:
        return "Table 5"
    return "Table 3"


def runs_found(metrics_root: Path, datasets: list[str]) -> list[dict[str, Any]]:
    """One entry per run folder: dataset, run, seed, method, variant, epochs, top-1/top-5, stages done."""
    out = []
    for ds in datasets:
        base = metrics_root / ds
        if not base.is_dir():
            continue
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            run, seed = split_seed(d.name)
            pre = _read(d / "pretrain.json")
            res = _read(d / ("supervised.json" if run == "supervised" else "linear.json"))
            inter = intermediate_epochs(d)
            out.append({
                "dataset": ds, "run": run, "seed": seed, "dir": d.name,
                "method": res.get("method") or pre.get("method") or run,
                "variant": res.get("variant") or pre.get("variant") or "",
                "epochs": pre.get("epochs"), "top1": res.get("top1"), "top5": res.get("top5"),
                "intermediate": inter, "device": res.get("device") or pre.get("device"),
                "collapse": pre.get("embedding_std_min_ratio"),
            })
    return out


def env_records(metrics_root: Path, datasets: list[str]) -> list[dict[str, Any]]:
    recs = []
    for ds in datasets:
        found = [*(metrics_root / ds).glob("*/env_*.json"), *(metrics_root / ds).glob(f"*/{KEPT}/env_*.json")]
        for p in sorted(found):
            r = _read(p)
            if r:
                kept = p.parent.name == KEPT  # Table 5's probes of the intermediate encoders
                run, _ = split_seed((p.parent.parent if kept else p.parent).name)
                stage = KEPT_STAGE if kept else p.stem[len("env_"):]
                recs.append({**r, "_dataset": ds, "_run": run, "_stage": stage, "_path": p})
    return recs


def _gpu_hours(wall_s: float, gpus: int, on_gpu: bool) -> float:
    return wall_s * gpus / 3600.0 if on_gpu else 0.0


def time_per_table(metrics_root: Path, datasets: list[str]) -> tuple[dict[str, dict[str, float]], str]:
    """{table: {wall_h, gpu_h, stages}} summed over environment records; falls back to the metrics' wall_s."""
    acc: dict[str, dict[str, float]] = defaultdict(lambda: {"wall_h": 0.0, "gpu_h": 0.0, "stages": 0})
    recs = env_records(metrics_root, datasets)
    if recs:
        for r in recs:
            wall = float(r.get("wall_s") or 0.0)
            t = acc[table_of(r["_run"], r["_stage"])]
            t["wall_h"] += wall / 3600
            t["gpu_h"] += _gpu_hours(wall, int(r.get("gpu_count") or 0), bool(r.get("cuda_available")))
            t["stages"] += 1
        return dict(acc), "summed from the environment records (`env_<stage>.json`)"
    for ds in datasets:
        base = metrics_root / ds
        if not base.is_dir():
            continue
        for d in base.iterdir():
            run, _ = split_seed(d.name)
            for fname, key, stage in (("pretrain.json", "wall_s_this_run", "pretrain"),
                                      ("linear.json", "wall_s", "linear"), ("supervised.json", "wall_s", "supervised"),
                                      *((f"{KEPT}/linear_e{e}.json", "wall_s", KEPT_STAGE)
                                        for e in intermediate_epochs(d))):
                m = _read(d / fname)
                if key in m:
                    wall = float(m[key] or 0.0)
                    t = acc[table_of(run, stage)]
                    t["wall_h"] += wall / 3600
                    t["gpu_h"] += _gpu_hours(wall, 1, str(m.get("device", "")).startswith("cuda"))
                    t["stages"] += 1
    return dict(acc), ("no environment records found: summed from the metrics files' wall_s (a resumed "
                       "pretraining counts its last invocation only; GPU-hours assume one GPU per run)")


def _hardware_lines(recs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    if not recs:
        devices = sorted({str(r["device"]) for r in runs if r.get("device")})
        return ["No environment records (`metrics/<dataset>/<run>/env_<stage>.json`) were found.",
                f"Devices named in the metrics files: {', '.join(devices) or 'none'}."]
    keys = ("gpu_names", "gpu_count", "driver", "cuda", "cudnn", "torch", "python", "cpu", "image_digest",
            "base_image", "git_commit", "source_sha256", "lock_sha256")
    combos: dict[tuple, int] = defaultdict(int)
    for r in recs:
        combos[tuple(json.dumps(r.get(k), sort_keys=True) for k in keys)] += 1
    lines = ["| stages | GPU | GPUs | driver | CUDA | cuDNN | torch | Python | CPU | image | code |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for combo, n in sorted(combos.items(), key=lambda kv: -kv[1]):
        v = {k: json.loads(s) for k, s in zip(keys, combo)}
        gpu = ", ".join(sorted(set(v["gpu_names"] or []))) or "none (CPU)"
        image = (v["image_digest"] or "") or (f"base {v['base_image']}" if v["base_image"] else "not a container build")
        code = (f"git {v['git_commit'][:12]}" if v["git_commit"] else
                f"source sha256 {str(v['source_sha256'])[:12]}")
        lines.append(f"| {n} | {gpu} | {v['gpu_count'] or 0} | {v['driver'] or '—'} | {v['cuda'] or '—'} | "
                     f"{v['cudnn'] or '—'} | {v['torch'] or '—'} | {v['python'] or '—'} | {v['cpu'] or '—'} | "
                     f"{image} | {code} |")
    locks = sorted({str(r.get("lock_sha256"))[:16] for r in recs})
    lines += ["", f"requirements.lock sha256 (first 16 hex): {', '.join(locks)}"
              + (" — **several lock files were used**" if len(locks) > 1 else "")]
    return lines


def _verdict_lines(verdict: dict[str, Any] | None, profile: str) -> list[str]:
    if not verdict:
        return ["No verdict: run `mnclglf verify --tolerance T --profile " + profile + "`."]
    c = verdict.get("counts", {})
    cells = verdict.get("cells", [])
    if verdict.get("short_runs"):
        head = (f"**Separate short runs**: {len(cells)} cells expected, {c.get('n/a', 0)} "
                f"produced, {c.get('missing', 0)} missing. They are compared through the claims "
                "above, not with Table 5's numbers (those are encoders saved during 200-epoch "
                "runs; docs/FIDELITY.md §4).")
    elif profile == "smoke" or (cells and not any(d.get("comparable") for d in cells)):
        head = (f"**Pipeline check**: {len(cells)} cells expected, {c.get('n/a', 0)} produced, "
                f"{c.get('missing', 0)} missing. No cell is compared with the paper (other dataset).")
    else:
        status = "**All cells reproduced**" if verdict.get("ok") else "**Not reproduced**"
        head = (f"{status} within {verdict.get('tolerance')} percentage points (or 2·std over seeds): "
                f"{c.get('pass', 0)} pass, {c.get('fail', 0)} fail, {c.get('missing', 0)} missing "
                f"of {len(cells)} cells.")
    lines = [head, "", "Details: [verdict.json](verdict.json)."]
    bad = [d for d in cells if d.get("verdict") in ("fail", "missing")]
    if bad:
        lines += ["", "| table | dataset | row | column | ours | paper | Δ | verdict |", "|---|---|---|---|---|---|---|---|"]
        for d in bad[:40]:
            ours = "—" if d.get("ours") is None else f"{d['ours']:.2f}" + (f" ± {d['std']:.2f}" if d.get("std") else "")
            lines.append(f"| {d['table']} | {d['dataset']} | {d['row']} | {d['column']} | {ours} | "
                         f"{'' if d.get('paper') is None else format(d['paper'], '.2f')} | "
                         f"{'' if d.get('delta') is None else format(d['delta'], '+.2f')} | {d['verdict']} |")
        if len(bad) > 40:
            lines.append(f"| … | {len(bad) - 40} more in verdict.json | | | | | | |")
    return lines


def _claim_lines(verdict: dict[str, Any] | None, pipeline_check: bool) -> list[str]:
    """One line per claim (its verdict, the comparison deciding it); the full table: claims.md."""
    claims = (verdict or {}).get("claims") or []
    if not claims:
        return ["No claims judged (no claims.yaml beside paper.yaml, or no verdict yet)."]
    lines = ["**Pipeline check**: no claim is the paper's on this data.", ""] if pipeline_check else []
    lines += ["Details, with the paper's sentences: [claims.md](claims.md).", "",
             "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| `{c['id']}` | {c['verdict']} | {c['evidence']} |" for c in claims]
    return lines


def summary_markdown(metrics_root: Path | str, profile_name: str, profile_datasets: list[str],
                     ablation_dataset: str | None, out_dir: Path | str,
                     verdict: dict[str, Any] | None = None) -> str:
    metrics_root, out_dir = Path(metrics_root), Path(out_dir)
    datasets = list(dict.fromkeys([*profile_datasets, *([ablation_dataset] if ablation_dataset else [])]))
    if verdict is None and (out_dir / "verdict.json").is_file():
        verdict = _read(out_dir / "verdict.json")
    runs = runs_found(metrics_root, datasets)
    if (verdict or {}).get("short_runs"):
        runs = [r for r in runs if split_epochs(r["run"])[1] is not None]
    recs = env_records(metrics_root, datasets)
    times, time_source = time_per_table(metrics_root, datasets)

    lines = [f"# MNCLGLF reproduction — {profile_name} profile", ""]
    smoke = profile_name == "smoke" or set(datasets) <= {"digits"}
    if smoke:
        lines += ["> " + SMOKE_BANNER, ""]
    lines += ["## The paper's claims", "", *_claim_lines(verdict, smoke), ""]
    lines += ["## Verdict", "", *_verdict_lines(verdict, profile_name), ""]

    lines += ["## What was run", ""]
    if runs:
        lines += ["| dataset | run folder | method | variant | seed | pretrain epochs | top-1 | top-5 | "
                  "saved encoders evaluated | collapse monitor (min/initial) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        order = {r: i for i, r in enumerate([*TABLE3_ROWS, "mnclglf-released", "random-init"])}
        for r in sorted(runs, key=lambda r: (datasets.index(r["dataset"]), order.get(r["run"], len(order)),
                                             r["run"], r["seed"] or 0)):
            f = (lambda v: "—" if v is None else f"{v:.2f}")
            lines.append(f"| {r['dataset']} | `{r['dir']}` | {DISPLAY.get(r['method'], r['method'])} | "
                         f"{r['variant'] or '—'} | {r['seed'] if r['seed'] is not None else 'first'} | "
                         f"{r['epochs'] if r['epochs'] is not None else '—'} | {f(r['top1'])} | {f(r['top5'])} | "
                         f"{', '.join(f'{e}e' for e in r['intermediate']) or '—'} | {f(r['collapse'])} |")
    else:
        lines.append(f"No run folders under `{metrics_root}` for {', '.join(datasets)}.")
    lines += ["", "## Hardware and software", "", *_hardware_lines(recs, runs), ""]

    lines += ["## Time", "", f"Wall time and GPU-hours per table, {time_source}. A run shared by several "
              "tables (the main `mnclglf` run is λ = 6 of Table 4, k = 2 of Table 6, the last column of "
              "Table 5) counts for Table 3 only.", ""]
    if times:
        lines += ["| table | stages | wall time (h) | GPU-hours |", "|---|---|---|---|"]
        for t in sorted(times):
            v = times[t]
            lines.append(f"| {t} | {int(v['stages'])} | {v['wall_h']:.2f} | {v['gpu_h']:.2f} |")
        tot_w = sum(v["wall_h"] for v in times.values())
        tot_g = sum(v["gpu_h"] for v in times.values())
        lines.append(f"| **total** | {int(sum(v['stages'] for v in times.values()))} | {tot_w:.2f} | {tot_g:.2f} |")
    else:
        lines.append("No timing recorded.")

    lines += ["", "## Tables and plots", ""]
    for name, what in (("table3", "Table 3, linear evaluation"), ("table4", "Table 4, λ"),
                       ("table5", "Table 5, accuracy against epochs"), ("table6", "Table 6, k")):
        files = [f"[{ext}]({name}.{ext})" for ext in ("md", "csv", "tex") if (out_dir / f"{name}.{ext}").is_file()]
        lines.append(f"- {what}: {' · '.join(files) if files else 'not written'}")
    plots = sorted((out_dir / "plots").glob("*.png")) if (out_dir / "plots").is_dir() else []
    if plots:
        lines += ["", "Plots:", ""] + [f"- [{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_summary(metrics_root: Path | str, profile_name: str, profile_datasets: list[str],
                  ablation_dataset: str | None, out_dir: Path | str, verdict: dict[str, Any] | None = None) -> Path:
    path = Path(out_dir) / "summary.md"
    write_text(path, summary_markdown(metrics_root, profile_name, profile_datasets, ablation_dataset, out_dir, verdict))
    return path


@click.command("report")
@click.option("--profile", required=True, help="Profile to report (a key of `profiles`).")
@click.option("--tolerance", default=1.0, show_default=True, type=click.FloatRange(min=0), metavar="T",
              help="Tolerance of the verdicts in the summary, percentage points.")
@click.option("--paper", "paper_file", default="results/paper.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The paper's numbers.")
@click.option("--metrics", "metrics_root", default="metrics", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the stages' metrics files.")
@click.option("--runs", "runs_root", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder of the runs (DVCLive curves for the plots).")
@click.option("--params", "params_file", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Parameter file (the profile) to read.")
def report_command(profile: str, tolerance: float, paper_file: str, metrics_root: str, runs_root: str,
                   params_file: str) -> None:
    """Write Tables 4-6 (+ Table 3 in LaTeX), the plots, verdict.json and summary.md of PROFILE.

    Never fails on the verdicts (that is `mnclglf verify`'s job): the page says what they are.
    """
    from mnclglf import config
    from mnclglf.report.ablations import write_all_tables
    from mnclglf.report.plots import write_plots
    from mnclglf.report.verify import profile_settings, verify

    s = profile_settings(config.read_params(params_file), profile)
    out = s["results"]
    if not Path(metrics_root).is_dir():
        raise UserError(f"{metrics_root}: no metrics folder; run the pipeline first")
    why = f"Tables 3-6: profile {profile} runs separate short runs, judged through the claims only"
    res: dict[str, list[Any]] = {"written": [], "skipped": [why]}
    plots: list[Path] = []
    ds, abl = s["datasets"], s["ablation_dataset"]
    if s["short"] is None:
        res = write_all_tables(metrics_root, profile, ds, abl, paper_file, out, s["seeds"])
        plots = write_plots(metrics_root, runs_root, profile, ds, abl, paper_file, out / "plots",
                            s["seeds"])
    cells, ok = verify(metrics_root, paper_file, tolerance, profile, datasets=ds,
                       ablation_dataset=abl, seeds=s["seeds"], out_dir=out, short=s["short"])
    summary = write_summary(metrics_root, profile, s["datasets"], s["ablation_dataset"], out)
    click.echo(f"claims: {out / 'claims.md'}")
    for p in res["written"]:
        click.echo(f"table: {p}")
    for reason in res["skipped"]:
        click.echo(f"skipped: {reason}")
    for p in plots:
        click.echo(f"plot: {p}")
    click.echo(f"verdicts: {out / 'verdict.json'} ({'all reproduced' if ok else 'not all reproduced'})")
    click.echo(f"summary: {summary}")
