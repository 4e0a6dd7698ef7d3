"""Every GPU busy: the DVC pipeline in parallel lanes, scheduled by GNU make ``-j``.

DVC has no parallel ``repro`` (iterative/dvc#755); the documented way is several
``dvc --wait-for-lock repro --single-item`` processes over disjoint parts of the DAG.
This module reads the stage graph from DVC and splits it into three parts:

* shared upstream stages (a stage two or more others need, e.g. ``download@D``) run first,
  in one ``dvc repro``;
* chains — the weakly connected pieces of what is left (``pretrain@D-M`` → its linear
  evaluations) — are the targets of a generated makefile run by ``make -k -j <lanes>``,
  listed longest first so that make starts them in that order; each takes a free lane
  (a GPU from ``GPUS``/``CUDA_VISIBLE_DEVICES``, pinned with ``CUDA_VISIBLE_DEVICES``, or a
  CPU lane) under an ``flock``;
* the final stages (``tabulate``), run by ``dvc repro`` once every chain succeeded.

A failed chain stops only itself (``make -k``); the end lists the failed chains with the
last lines of their logs and exits non-zero. Running the same command again resumes:
finished stages are up to date, killed pretraining runs resume from their checkpoints.
Logs and per-chain status files live in ``.dvc/tmp/lanes/``; ``mnclglf status`` reads them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from mnclglf.errors import UserError

LANES_DIR = Path(".dvc/tmp/lanes")
FLOPS_FILE = Path("results/bench/flops.json")
# Training images per epoch, for ordering only; unknown datasets count as CIFAR.
DATASET_IMAGES = {"tinyimagenet": 100_000, "cifar10": 50_000, "cifar100": 50_000, "digits": 1_437}
DATASET_PX = {"tinyimagenet": 64}


@dataclass
class Plan:
    """What to run: shared stages, chains (longest first), final stages, and the lanes."""

    shared: list[str]
    chains: list[list[str]]
    final: list[str]
    lanes: list[str] = field(default_factory=list)  # GPU ids, or "" per CPU lane

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


Graph = tuple[dict[str, set[str]], dict[str, str], dict[str, list[str]]]


def stage_graph(root: Path = Path(".")) -> Graph:
    """Each stage's upstream stages, cmd and outputs, from DVC's own index."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        deps = {s.addressing: {d.addressing for d in graph.successors(s)} for s in graph.nodes}
        cmds = {s.addressing: str(getattr(s, "cmd", "") or "") for s in graph.nodes}
        outs = {s.addressing: [str(o.def_path) for o in s.outs] for s in graph.nodes}
    return deps, cmds, outs


def _closure(start: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _topological(names: set[str], deps: dict[str, set[str]]) -> list[str]:
    """``names`` with every stage after the ones it depends on (ties by name, for stable plans)."""
    done: list[str] = []
    left = set(names)
    while left:
        ready = sorted(n for n in left if not (deps[n] & left))
        done += ready
        left -= set(ready)
    return done


def _pieces(names: set[str], deps: dict[str, set[str]],
            users: dict[str, set[str]]) -> list[set[str]]:
    """The weakly connected components of the subgraph on ``names``."""
    out, seen = [], set()
    for n in sorted(names):
        if n not in seen:
            piece = _closure({n}, {m: (deps[m] | users[m]) & names for m in names})
            seen |= piece
            out.append(piece)
    return out


def _decompose(piece: set[str], deps: dict[str, set[str]], users: dict[str, set[str]],
               shared: set[str]) -> list[set[str]]:
    """Chains of ``piece``: peel its sources until it falls apart into two or more pieces of
    two or more stages (``download`` → ``init`` → runs); those stages are shared, and each
    piece is decomposed in turn. A piece that never falls apart so is one chain (a
    pretraining run and its evaluations)."""
    peeled: set[str] = set()
    while len(peeled) < len(piece):
        left = piece - peeled
        peeled |= {n for n in left if not deps[n] & left}
        parts = _pieces(piece - peeled, deps, users)
        if sum(len(p) >= 2 for p in parts) >= 2:
            needed = {n for n in peeled if users[n] & piece}  # a peeled sink is a chain of its own
            shared |= needed
            return [{n} for n in sorted(peeled - needed)] + [
                c for p in parts for c in _decompose(p, deps, users, shared)]
    return [piece]


def split(deps: dict[str, set[str]],
          targets: list[str] | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """Shared, chains and final stages of what ``targets`` (default: every sink) need."""
    users: dict[str, set[str]] = {n: set() for n in deps}
    for n, ds in deps.items():
        for d in ds:
            users[d].add(n)
    unknown = [t for t in targets or () if t not in deps]
    if unknown:
        raise UserError(f"no stage named {unknown[0]} (`dvc stage list` lists them)")
    targets = list(targets or sorted(n for n in deps if not users[n]))
    work = _closure(set(targets), deps)
    final = {t for t in targets if len(deps[t]) >= 2}
    shared: set[str] = set()
    chains = [_topological(c, deps) for p in _pieces(work - final, deps, users)
              for c in _decompose(p, deps, users, shared)]
    return _topological(shared, deps), chains, _topological(final, deps)


def _gflop_table() -> dict[tuple[str, int], float]:
    try:
        runs = json.loads(FLOPS_FILE.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return {}
    return {(r["config"]["run"], int(r["config"]["h"])): r["flops_per_image"] / 1e9 for r in runs}


def chain_cost(chain: list[str], cmds: dict[str, str],
               gflop: dict[tuple[str, int], float]) -> float:
    """Relative cost of a chain: its costliest run's GFLOP/image × images/epoch (bench figures).

    Only the order matters: TinyImageNet and the 224-px released runs come before CIFAR,
    MNCLGLF before the lighter baselines, a lone evaluation last.
    """
    best = 0.0
    for stage in chain:
        found = dict(re.findall(r"--(dataset|method|run) (\S+)", cmds.get(stage, "")))
        dataset, run = found.get("dataset", ""), found.get("run") or found.get("method", "")
        base = re.sub(r"-(lam\S+|k\d+|one|seed\d+)$", "", run)
        px = DATASET_PX.get(dataset, 32)
        per_image = (gflop.get((run, px)) or gflop.get((run, 32)) or gflop.get((base, px))
                     or gflop.get((base, 32)) or 1.0)
        best = max(best, per_image * DATASET_IMAGES.get(dataset, 50_000))
    return best + len(chain)


def make_plan(targets: list[str] | None, lanes: list[str], root: Path = Path(".")) -> Plan:
    deps, cmds, _ = stage_graph(root)
    shared, chains, final = split(deps, targets)
    return Plan(shared, longest_first(chains, cmds), final, lanes)


def longest_first(chains: list[list[str]], cmds: dict[str, str]) -> list[list[str]]:
    gflop = _gflop_table()
    return sorted(chains, key=lambda c: (-chain_cost(c, cmds, gflop), c[0]))


def default_lanes(jobs: int | None, gpus: str | None) -> list[str]:
    """GPU ids from ``gpus`` (``0,3,5``); else ``jobs`` CPU lanes; else the visible GPUs."""
    if gpus:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if jobs:
        return [""] * jobs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    return ids or [""]


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def status_path(chain: list[str]) -> Path:
    return LANES_DIR / f"chain-{chain[0]}.json"


def _acquire_lane(plan: Plan) -> tuple[Any, str | None]:
    """A free lane's lock file (held until the chain ends) and its GPU id; no lanes: none."""
    if not plan.lanes:
        return None, None
    while True:
        for i, lane in enumerate(plan.lanes):
            handle = open(LANES_DIR / f"lane-{i}.lock", "w")  # noqa: SIM115 (held during the chain)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle, lane
            except BlockingIOError:
                handle.close()
        time.sleep(1)


def failure_reason(log: Path, lines: int = 3) -> str:
    """The ``error:`` line of the last attempt in a chain's log, else its last non-empty lines."""
    attempts = log.read_text(errors="replace").split("\n=== ") if log.exists() else [""]
    lines_all = attempts[-1].splitlines()
    text = [ln.strip() for ln in lines_all if ln.strip()]
    errors = [ln for ln in text if ln.startswith(("error:", "ERROR:"))]
    return " | ".join(errors[-2:] or text[-lines:]) or "no output"


def run_chain(plan: Plan, index: int) -> int:
    """Run chain ``index`` with ``dvc --wait-for-lock repro --single-item`` on a free lane."""
    chain = plan.chains[index]
    LANES_DIR.mkdir(parents=True, exist_ok=True)
    handle, lane = _acquire_lane(plan)
    env = dict(os.environ)
    if lane:
        env["CUDA_VISIBLE_DEVICES"] = lane
    record: dict[str, Any] = {"chain": chain, "lane": lane, "pid": os.getpid(),
                              "start": time.time(), "state": "running"}
    status_path(chain).write_text(json.dumps(record) + "\n")
    log = LANES_DIR / f"chain-{chain[0]}.log"
    with open(log, "a") as out:  # every attempt, so a rerun keeps why the last one failed
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} lane {lane or 'cpu'} pid {os.getpid()}\n")
        out.flush()
        rc = subprocess.call([_dvc(), "--wait-for-lock", "repro", "--single-item", *chain], env=env,
                             stdout=out, stderr=subprocess.STDOUT)
    record.update(state="done" if rc == 0 else "failed", rc=rc, end=time.time())
    if rc:
        record["reason"] = failure_reason(log)
    status_path(chain).write_text(json.dumps(record) + "\n")
    if handle is not None:
        handle.close()
    where = f" (lane {lane})" if lane else ""
    print(f"{'done' if rc == 0 else 'FAILED'}: {' -> '.join(chain)}{where}", flush=True)
    return rc


def write_makefile(plan: Plan, plan_file: Path) -> Path:
    """One target per chain, longest first: ``make -k -j <lanes>`` is the process pool.

    The recipes read a copy of the plan of their own, which no later ``--step plan`` rewrites.
    """
    own = plan_file.with_name(f"make-{plan_file.name}")
    plan.save(own)
    run = f"{shlex.quote(sys.executable)} -m mnclglf.lanes {shlex.quote(str(own))}"
    names = [f"chain{i}" for i in range(len(plan.chains))]
    lines = ["# generated by mnclglf lanes: one target per chain of the DVC graph, longest first",
             f".PHONY: all {' '.join(names)}", f"all: {' '.join(names)}", ""]
    for i, (name, chain) in enumerate(zip(names, plan.chains)):
        lines += [f"# {' -> '.join(chain)}", f"{name}:", f"\t@{run} {i}", ""]
    path = plan_file.with_name("Makefile")
    path.write_text("\n".join(lines))
    return path


def pending(plan: Plan) -> list[int]:
    """Indices of the chains with a stage not up to date (``dvc status``; all if that fails)."""
    stages = [s for chain in plan.chains for s in chain]
    done = subprocess.run([_dvc(), "--wait-for-lock", "status", "--json", *stages],
                          capture_output=True, text=True)
    try:
        changed = set(json.loads(done.stdout)) if done.returncode == 0 else set(stages)
    except ValueError:
        changed = set(stages)
    return [i for i, chain in enumerate(plan.chains) if changed & set(chain)]


def failures(plan: Plan) -> list[tuple[list[str], str]]:
    """Chains of ``plan`` that are not up to date, with the reason their last run recorded."""
    out = []
    for i in pending(plan):
        try:
            record = json.loads(status_path(plan.chains[i]).read_text())
        except (OSError, ValueError):
            record = {"reason": "did not run"}
        out.append((plan.chains[i], record.get("reason") or f"{record.get('state')}: interrupted?"))
    return out


def _dvc_repro(stages: list[str]) -> None:
    if stages and subprocess.call([_dvc(), "--wait-for-lock", "repro", *stages]) != 0:
        raise UserError(f"dvc repro {' '.join(stages)} failed (its output is above)")


def run_final(plan: Plan) -> None:
    """The final stages, once every chain is done; else the list of what failed and why."""
    failed = failures(plan)
    if failed:
        lines = [f"  {' -> '.join(chain)}: {why}" for chain, why in failed]
        raise UserError(f"{len(failed)} of {len(plan.chains)} chains did not finish (logs in "
                        f"{LANES_DIR}/; run the same command again to resume):\n"
                        + "\n".join(lines))
    _dvc_repro(plan.final)


def run_all(plan: Plan, plan_file: Path) -> None:
    _dvc_repro(plan.shared)
    makefile = write_makefile(plan, plan_file)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    jobs = max(1, len(plan.lanes))
    print(f"lanes: {len(plan.chains)} chains on {jobs} lane(s) "
          f"({', '.join(f'GPU {g}' if g else 'CPU' for g in plan.lanes)})", flush=True)
    subprocess.call(["make", "--no-print-directory", "-k", f"-j{jobs}", "-f", str(makefile)],
                    env=env)
    run_final(plan)


STEPS = ("all", "plan", "shared", "chain", "final")


@click.command("lanes")
@click.option("--target", "targets", multiple=True, metavar="STAGE",
              help="A stage to reproduce with what it needs (repeatable); default: every stage.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="CPU lanes; default: one lane per visible GPU.")
@click.option("--gpus", default=None, envvar="GPUS",
              help="GPU ids, one lane each, e.g. 0,3,5 (env GPUS).")
@click.option("--step", type=click.Choice(STEPS), default="all", show_default=True,
              help="all: shared, chains, final. plan/shared/chain/final: one part (Slurm's jobs).")
@click.option("--index", type=int, default=None,
              help="--step chain: which chain of the saved plan.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              default=LANES_DIR / "plan.json", show_default=True,
              help="Where the plan is saved (and read by --step chain/final).")
def lanes_command(targets: tuple[str, ...], jobs: int | None, gpus: str | None, step: str,
                  index: int | None, plan_file: Path) -> None:
    """Run the DVC pipeline (every stage, or the targets and what they need) in parallel lanes."""
    if step in ("chain", "final"):
        if not plan_file.exists():
            raise UserError(f"{plan_file}: no saved plan (run `mnclglf lanes --step plan` first)")
        plan = Plan.load(plan_file)
        if step == "final":
            return run_final(plan)
        if index is None or not 0 <= index < len(plan.chains):
            raise UserError(f"--index: give a chain of the plan, 0..{len(plan.chains) - 1}")
        plan.lanes = []  # the scheduler (Slurm) has already pinned the GPU
        if run_chain(plan, index):
            sys.exit(1)
        return
    plan = make_plan(list(targets) or None, default_lanes(jobs, gpus) if step == "all" else [])
    plan.save(plan_file)
    if step == "plan":
        todo = pending(plan)
        click.echo(f"{len(plan.chains)} chains after {len(plan.shared)} shared stages, "
                   f"{len(todo)} to run; plan in {plan_file}", err=True)
        click.echo(",".join(map(str, todo)))
    elif step == "shared":
        _dvc_repro(plan.shared)
    else:
        run_all(plan, plan_file)


def _make_target(argv: list[str]) -> int:
    """``python -m mnclglf.lanes PLAN INDEX``: one chain, the generated makefile's recipe."""
    return run_chain(Plan.load(Path(argv[0])), int(argv[1]))


if __name__ == "__main__":
    sys.exit(_make_target(sys.argv[1:]))
