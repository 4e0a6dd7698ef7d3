#!/usr/bin/env python3
"""`make gpu-check`: everything a first GPU hour must prove, in one script (at most 8 minutes on an H100).

1. `mnclglf doctor --json` (paper profile on a GPU, smoke profile on the CPU);
2. the bench of every method at the paper's shapes (32 px, 64 px; the released variant at
   224 px) with the default fast paths, and strict fp32 for MNCLGLF, NNCLR and the released
   variant: images/s, share of the bf16 peak, peak memory, augmentation share of the step,
   and one step under `torch.cuda.set_sync_debug_mode("error")`;
3. `mnclglf download --source` of a generated CIFAR-10 archive in the official format, then
   one short epoch of `pretrain` -> `linear-eval` for `mnclglf` and `mnclglf-released`;
4. the targets of issue 11 (MNCLGLF >= 10,000 images/s, NNCLR >= 25,000, released at 224 px
   >= 4,000, augmentation <= 10 % of the step), met or not;

and writes it all to `results/bench/<gpu>.json`. Without a usable GPU (or with --cpu-toy) it
runs the same steps at toy size on the CPU (narrow nets, tiny batches: minutes), writing
`cpu-toy.json`; tests/test_gpu_check.py runs that form. Exit status 1 when a step fails or a
training step synchronises with the host; a target not met is reported, not an error.

    python scripts/gpu_check.py [--out results/bench] [--cpu-toy] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the official-format archive generator of the download tests

from fixtures.official_archives import build_cifar10  # noqa: E402

from mnclglf import bench, config  # noqa: E402
from mnclglf.train.env import cuda_problem  # noqa: E402

METHODS = ("mnclglf", "nnclr", "mocov2", "simclr", "byol", "simsiam", "fastmoco", "supervised")
TARGETS = {("mnclglf", "paper", 32): 10_000, ("nnclr", "paper", 32): 25_000, ("mnclglf", "released", 32): 4_000}
AUGMENT_SHARE_MAX = 0.10
#: The CPU form: the same code paths with narrow nets and small queues, seconds per bench.
TOY = {"model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
       "mnclglf": {"queue_size": 64}, "mocov2": {"queue_size": 64, "bn_groups": 2}, "nnclr": {"queue_size": 64},
       "mnclglf-released": {"model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
                            "mnclglf": {"queue_size": 64}}}


def bench_plan(gpu: bool) -> list[dict[str, Any]]:
    """(method, variant, size, precision) of every bench: the paper's shapes, default and strict fp32."""
    plan = [{"method": m, "variant": "paper", "h": h, "precision": "auto"} for h in (32, 64) for m in METHODS]
    plan.append({"method": "mnclglf", "variant": "released", "h": 32, "precision": "auto"})  # trains at 224 px
    strict = [("mnclglf", "paper"), ("nnclr", "paper"), ("mnclglf", "released")]
    plan += [{"method": m, "variant": v, "h": 32, "precision": "fp32"} for m, v in strict]
    if not gpu:  # the toy form: one size is enough to run every code path
        plan = [p for p in plan if p["h"] == 32]
    return plan


def run_benches(gpu: bool, say: Any) -> list[dict[str, Any]]:
    rows = []
    for p in bench_plan(gpu):
        kw: dict[str, Any] = {"n": 4096 if gpu else 32, "classes": 10, "batch_size": 256 if gpu else 8,
                              "device": "cuda" if gpu else "cpu", "steps": 20 if gpu else 1,
                              "warmup": 5 if gpu else 0, "reference": False, "pil": False,
                              "width": 1.0 if gpu else 0.125,
                              "overrides": None if gpu else TOY, "threads": 0 if gpu else 1}
        r = bench.run_bench(p["method"], p["variant"], h=p["h"], w=p["h"], precision=p["precision"],
                            params_path=REPO / "params.yaml", **kw)
        st = r["step"]
        rows.append({**p, "image_size": r["config"]["image_size"], "images_per_s": st["images_per_s"],
                     "fraction_of_peak_bf16": st["fraction_of_peak_bf16"], "augment_share": st["augment_share"],
                     "host_sync": st["host_sync"], "precision_effective": r["config"]["precision_effective"],
                     "memory_bytes": st["memory"].get("cuda_max_allocated_bytes") or st["memory"]["rss_step_peak_bytes"],
                     "speed_applied": r["config"]["speed_applied"]})
        say(f"bench {p['method']}/{p['variant']} {r['config']['image_size']} px {p['precision']}: "
            f"{st['images_per_s']:,.0f} img/s, host sync {st['host_sync']}")
    return rows


def pipeline_params(work: Path, gpu: bool) -> Path:
    """The repository's parameters with one short epoch (and, on the CPU, the toy nets and `device: cpu`)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    short: dict[str, Any] = {"data_root": str(work / "data"), "pretrain": {"epochs": 1, "keep_epochs": []},
                             "linear_eval": {"epochs": 1}}
    if not gpu:
        short = config.deep_merge(short, TOY | {"pretrain": {"epochs": 1, "keep_epochs": [], "batch_size": 16,
                                                             "device": "cpu", "threads": 1},
                                               "linear_eval": {"epochs": 1, "device": "cpu", "batch_size": 16}})
        short["mnclglf-released"] = config.deep_merge(short["mnclglf-released"], {
            "pretrain": {"epochs": 1, "keep_epochs": [], "batch_size": 16, "device": "cpu", "threads": 1},
            "augment": {"size": 64}, "linear_eval": {"train_size": 64, "test_resize": 72, "test_crop": 64}})
    else:  # the variant's own pretrain section outranks the shared one
        short["mnclglf-released"] = {"pretrain": {"epochs": 1, "keep_epochs": []}}
    raw = config.deep_merge(raw, short)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_pipeline(work: Path, gpu: bool, say: Any) -> list[dict[str, Any]]:
    """download -> pretrain -> linear-eval through the CLI, in ``work`` (its own runs/, metrics/, data/)."""
    (work / "archive").mkdir(parents=True, exist_ok=True)
    built = build_cifar10(work / "archive", per_batch=2000 if gpu else 16)
    params = pipeline_params(work, gpu)
    exe = [sys.executable, "-m", "mnclglf"]
    commands = [["download", "--dataset", "cifar10", "--source", str(built.archive), "--md5", built.md5]]
    for run in ("mnclglf", "mnclglf-released"):
        commands += [["pretrain", "--dataset", "cifar10", "--method", run], ["linear-eval", "--dataset", "cifar10",
                                                                             "--method", run]]
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for cmd in commands:
        t0 = time.perf_counter()
        proc = subprocess.run([*exe, *cmd, "--params", str(params), "--quiet"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        start = [line for line in proc.stderr.splitlines() if line.startswith(("pretrain ", "linear-eval "))]
        rows.append({"command": " ".join(["mnclglf", *cmd]), "rc": proc.returncode,
                     "seconds": time.perf_counter() - t0, "start_line": start[0] if start else None,
                     "stdout_tail": proc.stdout.strip().splitlines()[-1:],
                     "stderr_tail": proc.stderr.strip().splitlines()[-3:] if proc.returncode else []})
        say(f"{rows[-1]['command']}: rc {proc.returncode}, {rows[-1]['seconds']:.1f}s  {rows[-1]['start_line'] or ''}")
        if proc.returncode:
            break
    return rows


def verdicts(gpu: bool, benches: list[dict[str, Any]], pipeline: list[dict[str, Any]],
             doctor: dict[str, Any]) -> dict[str, Any]:
    """What failed (errors) and which performance targets were met (GPU only)."""
    errors = [f"{b['method']}/{b['variant']} {b['precision']}: host sync ({b['host_sync']})" for b in benches
              if gpu and b["host_sync"] != "none"]
    errors += [f"{p['command']} exited {p['rc']}: {' '.join(p['stderr_tail'])}" for p in pipeline if p["rc"]]
    if len(pipeline) < 5:
        errors.append("the pipeline did not run to the end")
    want_device = "cuda:" if gpu else "cpu"
    errors += [f"{p['command']}: no start line naming {want_device}" for p in pipeline[1:]
               if not (p["start_line"] and f": {want_device}" in p["start_line"])]
    if gpu and not doctor["ok"]:
        errors.append("mnclglf doctor --profile paper failed")
    targets = {}
    for b in benches:
        key = (b["method"], b["variant"], b["h"])
        if gpu and b["precision"] == "auto" and key in TARGETS:
            targets[f"{b['method']}/{b['variant']} >= {TARGETS[key]:,} img/s"] = b["images_per_s"] >= TARGETS[key]
        if gpu and b["precision"] == "auto" and b["augment_share"] is not None:
            targets[f"{b['method']}/{b['variant']} {b['image_size']} px augmentation <= 10 %"] = \
                b["augment_share"] <= AUGMENT_SHARE_MAX
    return {"errors": errors, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "results" / "bench"), help="folder of the JSON result")
    ap.add_argument("--cpu-toy", action="store_true", help="the toy CPU form even where a GPU is usable")
    ap.add_argument("--keep", default=None, help="run the pipeline in this folder and keep it")
    args = ap.parse_args(argv)
    gpu = not args.cpu_toy and cuda_problem() is None
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    profile = "paper" if gpu else "smoke"
    doc = subprocess.run([sys.executable, "-m", "mnclglf", "doctor", "--profile", profile, "--json", "--no-bench",
                          "--params", str(REPO / "params.yaml")], cwd=REPO, capture_output=True, text=True)
    doctor = json.loads(doc.stdout) if doc.stdout.strip().startswith("{") else {"ok": False, "raw": doc.stderr}
    say(f"doctor --profile {profile}: {'ok' if doctor['ok'] else 'FAILED'}")
    benches = run_benches(gpu, say)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pipeline = run_pipeline(work, gpu, say)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"kind": "gpu-check", "form": "gpu" if gpu else "cpu-toy", "doctor": doctor, "benches": benches,
              "pipeline": pipeline, **verdicts(gpu, benches, pipeline, doctor),
              "wall_s": time.perf_counter() - t0}
    name = bench.short_name(bench.device_name(torch.device("cuda"))) if gpu else "cpu-toy"
    out = Path(args.out) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for label, met in result["targets"].items():
        say(f"target {label}: {'met' if met else 'NOT met'}")
    for err in result["errors"]:
        say(f"error: {err}")
    say(f"gpu-check ({result['form']}): {'passed' if not result['errors'] else 'FAILED'} in "
        f"{result['wall_s']:.0f}s; {out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
