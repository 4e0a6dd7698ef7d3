"""``mnclglf status``: every run of a profile in one table, from files only.

It reads ``dvc.yaml``/``params.yaml`` (through DVC's index, to know the stages), ``dvc.lock``
(what finished), DVC's ``.dvc/tmp/rwlock`` (what a live ``dvc repro`` is writing now), the
lanes' status files (``.dvc/tmp/lanes/``: what failed and why) and each run's DVCLive
folder, so it works beside a running ``make all``, on a cluster's login node, and after the
fact; it starts nothing and takes no lock. "done" means recorded in ``dvc.lock`` with its
outputs present (``dvc status`` says whether still up to date). ETAs are estimates: a
running run's remaining epochs at its last images/s; a waiting one at the mean wall time of
the finished stages of its kind; the profile's, the remaining work over the lanes.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from mnclglf.lanes import LANES_DIR, Plan, longest_first, split, stage_graph, status_path

PROFILE_TARGETS = {"smoke": "tabulate-smoke", "paper": "tabulate"}


@dataclass
class Row:
    stage: str
    state: str = "waiting"
    epoch: int | None = None
    total: int | None = None
    loss: float | None = None
    images_per_s: float | None = None
    embedding_std: float | None = None
    knn_top1: float | None = None
    eta_s: float | None = None
    wall_s: float | None = None
    why: str = ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def writing_now() -> set[str]:
    """Outputs a live ``dvc repro`` holds its write lock on (absolute paths)."""
    lock = _read_json(Path(".dvc/tmp/rwlock")).get("write", {})
    return {path for path, info in lock.items() if _pid_alive(int(info.get("pid", 0)))}


def total_epochs(cmd: str, raw: dict[str, Any]) -> tuple[int | None, int | None]:
    """(epochs, training images per epoch) the stage's run is configured for, if known."""
    from mnclglf import config

    words = cmd.split()
    found = dict(re.findall(r"--(dataset|method|run) (\S+)", cmd))
    dataset, run = found.get("dataset"), found.get("run") or found.get("method") or "supervised"
    kind = words[1] if len(words) > 1 and words[0] == "mnclglf" else ""
    if not dataset or (kind, run) == ("pretrain", "random-init") or "--kept-epochs" in words \
            or kind not in ("pretrain", "supervised", "linear-eval"):
        return None, None
    try:
        if kind == "linear-eval":
            return config.linear_eval_config(raw, dataset, run).epochs, None
        cfg = config.run_config(raw, dataset, run)
        n = _read_json(Path(cfg.data_root) / dataset / "meta.json").get("counts", {}).get("train")
        bs = cfg.pretrain.batch_size
        return cfg.pretrain.epochs, (n // bs * bs) if n else None
    except Exception:  # noqa: BLE001 (a run the parameters cannot describe shows without a total)
        return None, None


def fill_live(row: Row, outs: list[str]) -> None:
    """Epoch, loss, images/s, collapse monitor and k-NN from the stage's DVCLive folder."""
    for out in outs:
        live = _read_json(Path(out) / "live" / "metrics.json")
        if live:
            row.epoch = int(live.get("step", 0))
            row.loss = live.get("loss", live.get("train_loss"))
            row.images_per_s = live.get("images_per_s")
            row.embedding_std = live.get("embedding_std")
            row.knn_top1 = live.get("knn_top1")
            return


def stage_rows(target: str | None) -> tuple[list[Row], Plan | None]:
    deps, cmds, outs = stage_graph()
    shared, chains, final = split(deps, [target] if target else None)
    lock = (_read_yaml(Path("dvc.lock")) or {}).get("stages", {})
    raw = _read_yaml(Path("params.yaml"))
    busy, cwd = writing_now(), Path.cwd()
    plan = Plan.load(LANES_DIR / "plan.json") if (LANES_DIR / "plan.json").exists() else None
    rows: list[Row] = []
    for chain in [[s] for s in shared] + longest_first(chains, cmds) + [[s] for s in final]:
        record, failed_seen = _read_json(status_path(chain)), False
        for stage in chain:
            row = Row(stage)
            row.total, images = total_epochs(cmds[stage], raw)
            fill_live(row, outs[stage])
            if any(str(cwd / o) in busy for o in outs[stage]):
                row.state = "running"
                if row.images_per_s and images and row.total is not None and row.epoch is not None:
                    row.eta_s = (row.total - row.epoch) * images / row.images_per_s
            elif stage in lock and all(Path(o).exists() for o in outs[stage]):
                row.state = "done"
                row.wall_s = next((_read_json(Path(o)).get("wall_s") for o in outs[stage]
                                   if Path(o).name.startswith("env_")), None)
            elif record.get("state") == "failed" and not failed_seen:  # its first unfinished stage
                row.state, row.why, failed_seen = "failed", record.get("reason", ""), True
            rows.append(row)
    return rows, plan


def estimate(rows: list[Row], lanes: int) -> float | None:
    """The profile's remaining wall time: running ETAs, waiting stages at the mean of their kind."""
    walls: dict[str, list[float]] = {}
    for r in rows:
        if r.state == "done" and r.wall_s:
            walls.setdefault(r.stage.split("@")[0], []).append(r.wall_s)
    every = [w for ws in walls.values() for w in ws]
    if not every:
        return None
    left = 0.0
    for r in rows:
        if r.state == "running":
            left += r.eta_s or 0.0
        elif r.state == "waiting":
            left += statistics.mean(walls.get(r.stage.split("@")[0]) or every)
    return left / max(1, lanes)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


STATE_STYLE = {"done": "green", "running": "bold cyan", "failed": "bold red", "waiting": "dim"}


def render(rows: list[Row], plan: Plan | None, profile: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"mnclglf status — profile {profile} ({time.strftime('%H:%M:%S')})")
    table.add_column("stage", no_wrap=True)
    for name in ("state", "epoch", "loss", "img/s", "emb. std", "k-NN", "ETA"):
        table.add_column(name, justify="left" if name == "state" else "right", no_wrap=True)
    for r in rows:
        done = r.epoch if r.epoch is not None else "-"
        epoch = f"{done}/{r.total}" if r.total is not None else ""
        table.add_row(r.stage, Text(r.state, style=STATE_STYLE[r.state]), epoch,
                      _num(r.loss, ".3f"), _num(r.images_per_s, ".0f"),
                      _num(r.embedding_std, ".3f"), _num(r.knn_top1, ".1f"), _hms(r.eta_s))
    counts = {s: sum(r.state == s for r in rows) for s in STATE_STYLE}
    lanes = len(plan.lanes) if plan and plan.lanes else 1
    eta = estimate(rows, lanes)
    when = f"~{_hms(eta)} (estimate)" if eta is not None else "unknown (no finished stage to time)"
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [f"{tally}; {lanes} lane(s); profile ETA {when}"]
    lines += [f"failed: {r.stage}: {r.why}" for r in rows if r.state == "failed"]
    note = ("emb. std: the collapse monitor (per-dimension std of the normalised embeddings); "
            "k-NN: top-1 of the online monitor of pretraining (train/knn.py), "
            "not a linear-evaluation result")
    return Group(table, Text("\n".join(lines)), Text(note, style="dim"))


@click.command("status")
@click.option("--profile", type=click.Choice(sorted(PROFILE_TARGETS)), default="paper",
              show_default=True,
              help="Whose runs: smoke (tabulate-smoke and what it needs) or paper (tabulate).")
@click.option("--watch", is_flag=True, help="Refresh the table until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds between refreshes under --watch.")
def status_command(profile: str, watch: bool, interval: float) -> None:
    """Every run of the profile: state, epoch, loss, images/s, collapse, k-NN, ETA (files only)."""
    from rich.console import Console
    from rich.live import Live

    def view() -> Any:
        return render(*stage_rows(PROFILE_TARGETS[profile]), profile)

    console = Console()
    if not watch or not console.is_terminal:  # a pipe or log file gets one table per refresh
        while True:
            console.print(view())
            if not watch:
                return
            time.sleep(interval)
    with Live(view(), console=console, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(view(), refresh=True)
