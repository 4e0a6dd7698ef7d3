"""``mnclglf doctor``: can this machine run a profile, and run it well? Checked before any stage.

Each check is a row (what, status, detail, fix). A ``fail`` row means the profile cannot run
well here and makes the command exit non-zero: the paper datasets on a machine without a
usable CUDA GPU, a GPU this torch build has no kernels for, too little disk, a folder that
cannot be written. The wall-time estimate times a few MNCLGLF steps of the profile's real
configuration on synthetic data of each dataset's shape and prices every pretraining run of
the profile at that rate (MNCLGLF's is the costliest step at each shape, so it is an upper
bound; linear evaluation adds about 5 %, docs/RESOURCES.md). Beside it, on any machine, the
projection that docs/RESOURCES.md makes: each run's counted FLOPs per image
(``results/bench/flops.json``) at an assumed share of one H100's dense bf16 peak, so that a
profile's GPU cost can be read before a GPU is at hand (a projection, not a measurement).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mnclglf import config, paths
from mnclglf.errors import UserError
from mnclglf.train.env import GPU_DATASETS, cuda_problem, unsupported_arch

#: Disk a profile needs, in GB: data + run outputs + DVC's cached copy of the outputs
#: (docs/RESOURCES.md: paper 2.3 GB data + about 10 GB outputs; smoke under 0.2 GB; quick:
#: CIFAR-10 and six runs' checkpoints, about 3 GB).
DISK_NEED_GB = {"paper": 25.0, "smoke": 1.0, "quick": 6.0}
#: Training images of each dataset when it is not prepared yet (the official splits; digits: 1797 × 0.8).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "tinyimagenet": 100_000, "digits": 1_437}
MIN_DRIVER = 580  # the CUDA 13 builds of requirements.lock
FLOPS_FILE = Path("results/bench/flops.json")  # counted FLOPs/image, docs/RESOURCES.md's source
PROJECTED_SHARE = 0.40  # of the H100's dense bf16 peak: docs/RESOURCES.md's assumption
PROJECTED_GPU = "H100"


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    fix: str = ""


def torch_build() -> Check:
    cuda = torch.version.cuda
    detail = f"torch {torch.__version__}, " + (f"CUDA {cuda} build" if cuda else "CPU-only build")
    return Check("torch", "ok", detail)


def driver_version() -> str | None:
    """The NVIDIA driver version that ``nvidia-smi`` reports, or None without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def driver(needs_gpu: bool) -> Check:
    version = driver_version()
    if version is None:
        return Check("NVIDIA driver", "fail" if needs_gpu else "info", "none found (no nvidia-smi)",
                     "install an NVIDIA driver >= 580; in Docker run with --gpus all" if needs_gpu else "")
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_DRIVER:
        return Check("NVIDIA driver", "fail" if needs_gpu else "warn", f"{version}: older than {MIN_DRIVER}",
                     f"torch's CUDA {torch.version.cuda} wheels need a driver >= {MIN_DRIVER}")
    return Check("NVIDIA driver", "ok", version)


def cuda(needs_gpu: bool, profile: str = "paper") -> list[Check]:
    problem = cuda_problem()
    if problem is not None:
        return [Check("CUDA", "fail" if needs_gpu else "info", problem,
                      f"the {profile} profile needs a CUDA GPU; on this machine `make smoke` runs the whole pipeline "
                      "on the bundled digits data" if needs_gpu else "")]
    rows = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        arch = unsupported_arch(i)
        bf16 = torch.cuda.is_bf16_supported()
        detail = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor} "
                  f"(build: {' '.join(torch.cuda.get_arch_list())}), bf16 {'yes' if bf16 else 'no'}")
        if arch:
            rows.append(Check(f"GPU {i}", "fail", arch, "use a GPU of compute capability 7.5 or newer"))
        elif not bf16:
            rows.append(Check(f"GPU {i}", "warn", detail, "no bf16: set speed.precision: tf32 in params.yaml"))
        else:
            rows.append(Check(f"GPU {i}", "ok", detail))
    return rows


def compile_check(speed: config.SpeedConfig) -> Check:
    from mnclglf.train.fast import compile_available

    ok, why = compile_available()
    include = sysconfig.get_paths()["include"]
    if ok:
        return Check("torch.compile", "ok", f"can build kernels (C++ compiler, {include}/Python.h); "
                     f"speed.compile is {'on' if speed.compile else 'off'}")
    if speed.compile:
        return Check("torch.compile", "fail", why, "set speed.compile: false, or install g++ and python3.11-dev")
    return Check("torch.compile", "info", f"cannot work here ({why}); speed.compile is off, as it should be")


def disk(profile: str, root: Path) -> Check:
    need = DISK_NEED_GB.get(profile)
    free = shutil.disk_usage(root).free / 1e9
    if need is None:
        return Check("disk", "info", f"{free:.1f} GB free in {root.resolve()}; no estimate for profile {profile}")
    status = "ok" if free >= need else "fail"
    return Check("disk", status, f"{free:.1f} GB free in {root.resolve()}, profile {profile} needs about {need:g} GB",
                 "" if status == "ok" else f"free {need - free:.1f} GB or run from a larger disk")


def datasets(raw: dict[str, Any], names: list[str]) -> list[Check]:
    from mnclglf.data.store import load_meta

    rows = []
    for name in names:
        try:
            meta = load_meta(raw.get("data_root", "data"), name)
        except UserError:
            rows.append(Check(f"data {name}", "info", "not prepared yet; the download stage prepares it"))
        else:
            rows.append(Check(f"data {name}", "ok", f"prepared: {len(meta['classes'])} classes"))
    return rows


def writable(folders: list[Path]) -> list[Check]:
    """Each folder, or its nearest existing parent, accepts a new file."""
    rows = []
    for folder in folders:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            with tempfile.NamedTemporaryFile(dir=probe, prefix=".doctor-"):
                pass
        except OSError as exc:
            rows.append(Check(f"write {folder}", "fail", f"{probe}: {exc.strerror}",
                              f"make {probe} writable by user {os.getuid()}"))
        else:
            rows.append(Check(f"write {folder}", "ok", "writable" if probe == folder else f"{probe} writable"))
    return rows


def profile_runs(raw: dict[str, Any], profile: str) -> list[tuple[str, str]]:
    """Every (dataset, run) that pretrains in ``profile``: dvc.yaml's pretrain stages of it.

    A short-run profile (``epochs`` set: quick) pretrains ``runs`` as ``<run>-e<epochs>`` and
    ``repeat_runs`` once more per seed of its ``repeat_seeds``; the others pretrain every Table 3
    run (once more per seed of ``repeat_seeds``) and, on ``ablation_datasets``, Tables 4-6's.
    """
    prof = (raw.get("profiles") or {})[profile]
    names = list(prof["datasets"])
    if prof.get("epochs"):
        e = int(prof["epochs"])
        runs = [(d, config.short_run(r, e)) for d in names for r in prof.get("runs") or []]
        seeds, again = prof.get("repeat_seeds") or [], prof.get("repeat_runs") or []
        repeats = [(s, r) for s in seeds for r in again]
        return runs + [(d, f"{config.short_run(r, e)}-seed{s}") for d in names for s, r in repeats]
    runs = []
    abl = raw.get("ablations") or {}
    repeats = config.seeds(raw)[1:]
    for d in names:
        methods = [m for m in raw.get("methods", []) if m != "random-init"]
        runs += [(d, m) for m in [*methods, "supervised"]]
        runs += [(d, f"{m}-seed{s}") for s in repeats for m in [*methods, "supervised"]]
        if d in raw.get("ablation_datasets", []):
            runs += [(d, f"mnclglf-lam{v:g}") for v in abl.get("lam", [])]
            runs += [(d, f"mnclglf-k{v}") for v in abl.get("k", [])] + [(d, "mnclglf-one")]
    return runs


def _projected_seconds(raw: dict[str, Any], d: str, run: str, entry: dict[str, Any],
                       rate: float) -> float:
    """One run's pretraining and final linear evaluation at ``rate`` FLOP/s (docs/RESOURCES.md)."""
    images = TRAIN_IMAGES[d]
    seconds = images * config.run_config(raw, d, run).pretrain.epochs * entry["flops_per_image"]
    if config.base_method(run) != "supervised":  # the probe: the frozen encoder forward per image
        lin_epochs = config.linear_eval_config(raw, d, run).epochs
        seconds += images * lin_epochs * entry["encoder_forward_flops_per_image"]
    return seconds / rate


def projected(raw: dict[str, Any], profile: str, flops_file: Path = FLOPS_FILE) -> Check:
    """The profile's runs on one H100, projected as docs/RESOURCES.md does: not measured.

    seconds = images × epochs × FLOPs/image ÷ (share × peak), with the FLOPs counted per image
    in ``flops_file``; a linear evaluation runs the frozen encoder forward for its epochs.
    """
    from mnclglf.bench import peak_bf16

    try:
        entries = json.loads(flops_file.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return Check("projected time", "info", f"not projected: no {flops_file}")
    counted = {(e["config"]["run"], e["config"]["h"]): e for e in entries
               if e.get("kind") == "flops"}
    rate = PROJECTED_SHARE * (peak_bf16(PROJECTED_GPU) or 0.0)
    runs = profile_runs(raw, profile)
    seconds = 0.0
    for d, run in runs:
        released = config.plain_run(run) == "mnclglf-released"
        name = "mnclglf-released" if released else config.base_method(run)
        # the released run upsamples every dataset to 224 px: one figure, filed under h = 32
        entry = counted.get((name, 64 if d == "tinyimagenet" and not released else 32))
        if entry is None or d not in TRAIN_IMAGES or d == "digits":
            return Check("projected time", "info",
                         f"not projected: {flops_file} has no figure for {d}/{name}")
        seconds += _projected_seconds(raw, d, run, entry, rate)
    return Check("projected time", "info",
                 f"projected on one {PROJECTED_GPU}: {_duration(seconds)} from docs/RESOURCES.md "
                 f"figures for {len(runs)} pretraining runs and their final linear evaluations "
                 f"({flops_file} FLOPs/image at {PROJECTED_SHARE:.0%} of "
                 f"{rate / PROJECTED_SHARE / 1e12:.0f} TFLOP/s; at 10-20 % of peak, 2-4x as long); "
                 "a projection, not a measurement")


def step_rate(raw: dict[str, Any], dataset: str, run: str, device: torch.device, steps: int) -> float:
    """Images/s of ``run``'s training step on ``dataset``'s configuration, on synthetic data of its shape."""
    from mnclglf.bench import synthetic, timed
    from mnclglf.train import pretrain

    on_device = {"pretrain": {"device": device.type}}
    layer = on_device | ({run: on_device} if run in config.VARIANT_RUNS else {})  # a variant's section outranks
    cfg = config.run_config(config.deep_merge(raw, layer), dataset, run)
    size = {"digits": int(raw.get("digits", {}).get("size", 16)), "tinyimagenet": 64}.get(dataset, 32)
    bs = cfg.pretrain.batch_size
    s = pretrain.setup(cfg, *synthetic(2 * bs, size, size, 10, device), 10)
    idx = torch.arange(bs, device=s.device)
    pretrain.train_step(s, idx, 0, steps + 1)  # warm-up: lazy initialisation, cuDNN autotuning
    seconds = timed(lambda: [pretrain.train_step(s, idx, i + 1, steps + 1) for i in range(steps)], device)
    return steps * bs / seconds


def estimate(raw: dict[str, Any], profile: str, device: torch.device) -> Check:
    """Wall time of the profile's pretraining, every run priced at MNCLGLF's measured rate on its shape."""
    from mnclglf.data.store import load_split

    rates: dict[tuple[str, str], float] = {}
    counts: dict[str, int] = {}
    seconds = 0.0
    steps = 5 if device.type == "cuda" else 2
    runs = profile_runs(raw, profile)
    for d, run in runs:
        key = (d, "mnclglf-released" if run.startswith("mnclglf-released") else "mnclglf")
        if key not in rates:
            rates[key] = step_rate(raw, d, key[1], device, steps)
        if d not in counts:
            try:
                counts[d] = int(load_split(raw.get("data_root", "data"), d, "train")[1].shape[0])
            except UserError:
                counts[d] = TRAIN_IMAGES[d]
        n = counts[d]
        seconds += n * config.run_config(raw, d, run).pretrain.epochs / rates[key]
    detail = (f"about {_duration(seconds)} on {device.type} for {len(runs)} pretraining runs "
              f"(MNCLGLF steps timed here: " + ", ".join(f"{d}/{v} {r:,.0f} img/s" for (d, v), r in rates.items())
              + "; an upper bound, linear evaluation adds about 5 %)")
    return Check("wall time", "info", detail)


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def run_doctor(params_file: str = "params.yaml", profile: str = "paper", bench: bool = True) -> list[Check]:
    """Every check of ``profile`` (a key of the params file's ``profiles``)."""
    raw = config.read_params(params_file)
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise UserError(f"--profile {profile!r}: not in {params_file} `profiles`; allowed: {', '.join(profiles)}")
    names = list(profiles[profile]["datasets"])
    needs_gpu = any(d in GPU_DATASETS for d in names)
    speed = config.run_config(raw, names[0], "mnclglf").speed
    rows = [torch_build(), driver(needs_gpu), *cuda(needs_gpu, profile), compile_check(speed), disk(profile, Path("."))]
    rows += datasets(raw, names)
    rows += writable([Path(raw.get("data_root", "data")), Path(".dvc/cache"), paths.RUNS, paths.METRICS,
                      Path(profiles[profile]["results"])])
    usable = cuda_problem() is None
    if not bench:
        rows.append(Check("wall time", "info", "not estimated (--no-bench)"))
    elif needs_gpu and not usable:
        rows.append(Check("wall time", "info", "not estimated: weeks on a CPU (docs/RESOURCES.md: MNCLGLF on "
                          "CIFAR-10 alone takes 23-70 days on 2 cores)"))
    else:
        rows.append(estimate(raw, profile, torch.device("cuda" if usable else "cpu")))
    if needs_gpu:
        rows.append(projected(raw, profile, Path(params_file).parent / FLOPS_FILE))
    return rows


def render(rows: list[Check], profile: str) -> Any:
    from rich.table import Table

    colour = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}
    table = Table(title=f"mnclglf doctor — profile {profile}")
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", r.detail, r.fix)
    return table


def as_json(rows: list[Check], profile: str) -> dict[str, Any]:
    return {"profile": profile, "ok": not any(r.status == "fail" for r in rows), "checks": [asdict(r) for r in rows],
            "python": sys.version.split()[0]}
