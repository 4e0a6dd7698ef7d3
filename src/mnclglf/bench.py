"""``mnclglf bench``: how fast the real training step is, against the references other SSL code uses.

For one method, dataset shape, batch size, device and precision, on synthetic uint8
images held on the device, :func:`run_bench` times after warm-up, synchronising the device:

* **augment** — three views of a batch by the package's batched augmentation
  (``data.augment.SSLAugment``, the training path), and the same three views by the
  per-image torchvision pipeline most SSL code uses (v1 and v2 transforms on PIL images,
  single process, the same parameters; on the CPU timed on 16 of the batch's images and
  scaled to the batch), repetitions interleaved; their ratio is measured, not assumed;
* **step** — a full training step through ``pretrain.setup`` + ``pretrain.train_step``
  (augmentation, forward, backward, optimiser, EMA, queue), with the ``speed`` fast paths
  of the configuration; images/s, ms per step, peak memory, the model FLOPs per image
  (``torch.utils.flop_counter.FlopCounterMode`` on one step's forward + backward), the
  achieved FLOP/s and, on a GPU, the fraction of the device's dense bf16 peak; ``augment_share``:
  the step's views at the batched augmentation's median per view, as a share of the step;
* **reference** (``mnclglf`` paper variant) — the plain eager transcription of
  Algorithm 1 in ``bench_reference``, on the same initial weights, shapes and views,
  interleaved step by step with the package's step so that both see the same load.

Nothing here imports DVC or DVCLive: the benchmark runs on machines without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mnclglf import config
from mnclglf.envinfo import cpu_model
from mnclglf.errors import UserError

SCHEMA = 1
# Dense bf16 tensor-core peak by device name (FLOP/s); first match wins, so more specific names first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 3090", 71e12),  # tensor cores, fp16/bf16 inputs with fp32 accumulation
)
# pil_images: how many of the batch's images the per-image pipelines are timed on (0: all); its cost
# is linear in the images, so the time is scaled to the batch. flop_images: the batch the FLOPs are
# counted on (0: all); per-image FLOPs do not depend on it beyond the N×N logits (< 0.1% of a step).
CPU_DEFAULTS = {"batch_size": 64, "steps": 1, "warmup": 0, "aug_reps": 3, "pil_reps": 3, "pil_images": 16,
                "flop_images": 4}
GPU_DEFAULTS = {"batch_size": 256, "steps": 20, "warmup": 5, "aug_reps": 20, "pil_reps": 3, "pil_images": 0,
                "flop_images": 0}


# -- small helpers ----------------------------------------------------------------------------
#: ``--precision``: the ``speed.precision`` of the benchmarked run (auto: the device's default).
PRECISIONS = ("auto", "bf16", "tf32", "fp32")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bf16(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU by its ``torch.cuda.get_device_name``; None if unknown."""
    for key, peak in PEAK_BF16:
        if key.lower() in name.lower():
            return peak
    return None


def cpu_name() -> str:
    return cpu_model() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def short_name(name: str) -> str:
    """A file-name slug of a device name: ``AMD EPYC`` → ``amd-epyc``, ``NVIDIA H100 80GB HBM3`` → ``h100-80gb-hbm3``."""
    name = re.sub(r"\((r|tm)\)|\bnvidia\b|\bcpu\b|@.*$|\bprocessor\b", " ", name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return slug or "device"


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def maxrss_bytes() -> int:
    """Peak RSS of this process so far (``resource.getrusage``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


class RssSampler:
    """Peak of the current RSS, sampled every ``interval`` s in a thread (``ru_maxrss`` only ever grows)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak = interval, rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes() or 0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)


def sync_debug_step(s: Any, idx: torch.Tensor, step: int, total: int) -> str:
    """One training step under ``torch.cuda.set_sync_debug_mode("error")``: ``"none"`` when it never
    waited on the device, else the error CUDA raised; on the CPU ``"not checked (cpu)"``.

    (tests/test_no_host_sync.py proves the same on fake CUDA tensors, on any machine.)
    """
    from mnclglf.train import pretrain

    if s.device.type != "cuda":
        return "not checked (cpu)"
    torch.cuda.synchronize(s.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pretrain.train_step(s, idx, step, total)
        return "none"
    except RuntimeError as exc:
        return f"synchronised: {str(exc).strip().splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(s.device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def summary(times: list[float], images: int) -> dict[str, Any]:
    """Median/mean/min/max of per-call seconds and the images/s at the median."""
    med = statistics.median(times)
    return {"ms_median": med * 1e3, "ms_mean": statistics.fmean(times) * 1e3, "ms_min": min(times) * 1e3,
            "ms_max": max(times) * 1e3, "n": len(times), "images_per_s": images / med, "times_s": times}


def load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- configuration ------------------------------------------------------------------------------
def run_name(method: str, variant: str) -> str:
    """The ``methods`` entry a (method, variant) pair is: ``mnclglf`` + ``released`` → ``mnclglf-released``."""
    if method == "mnclglf" and variant != "paper":
        name = f"mnclglf-{variant}"
        if name not in getattr(config, "VARIANT_RUNS", {}):
            raise UserError(f"--variant {variant!r}: this build has no run {name!r}")
        return name
    return method


def bench_config(method: str, variant: str, h: int, batch_size: int, device: str, precision: str, width: float,
                 params_path: str | Path | None, threads: int = 0, speed: dict[str, bool] | None = None,
                 overrides: dict[str, Any] | None = None) -> config.RunConfig:
    """The run configuration benchmarked: the params file's, with the bench's shape, device and speed on top."""
    path = Path(params_path) if params_path else None
    raw = config.read_params(path) if path and path.is_file() else {}
    if path and not path.is_file() and str(path) != "params.yaml":
        raise UserError(f"{path}: parameter file not found")
    dataset = "tinyimagenet" if h == 64 else "cifar10"  # the paper's datasets have no overrides: Table 2's config
    bench_layer: dict[str, Any] = {
        "model": {"width": width},
        "pretrain": {"batch_size": batch_size, "device": device, "threads": threads},
        "speed": {**(speed or {}), "precision": precision},
    }
    raw = config.deep_merge(config.deep_merge(raw, bench_layer), overrides or {})
    name = run_name(method, variant)
    if name in getattr(config, "VARIANT_RUNS", {}):  # the variant's own section outranks the shared one
        raw = config.deep_merge(raw, {name: {"pretrain": {"batch_size": batch_size, "device": device},
                                             "model": {"width": width}}})
    return config.run_config(raw, dataset, name)


def synthetic(n: int, h: int, w: int, classes: int, device: torch.device, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random uint8 images (N×3×H×W) and labels, made on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=gen, device=device)
    labels = torch.randint(0, classes, (n,), generator=gen, device=device)
    return images, labels


# -- the per-image reference pipeline -----------------------------------------------------------
def pil_pipelines(cfg: config.RunConfig, size: int, mean_std: tuple[tuple[float, ...], tuple[float, ...]]
                  ) -> dict[str, Callable]:
    """torchvision's per-image SSL augmentation (v1 and v2) with ``cfg.augment``'s parameters."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    from mnclglf.data.augment import blur_kernel_size

    a = cfg.augment
    mode = getattr(a, "interpolation", "bilinear")
    interp = T.InterpolationMode.BICUBIC if mode == "bicubic" else T.InterpolationMode.BILINEAR
    kernel = blur_kernel_size(size, a.blur_kernel_frac)
    mean, std = list(mean_std[0]), list(mean_std[1])
    v1 = T.Compose([
        T.RandomResizedCrop(size, scale=a.crop_scale, ratio=a.crop_ratio, interpolation=interp),
        T.RandomHorizontalFlip(a.flip_p),
        T.RandomApply([T.ColorJitter(*a.jitter)], p=a.jitter_p),
        T.RandomGrayscale(a.gray_p),
        T.RandomApply([T.GaussianBlur(kernel, a.blur_sigma)], p=a.blur_p),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    tv2 = v2.Compose([
        v2.RandomResizedCrop(size, scale=a.crop_scale, ratio=a.crop_ratio, interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(a.flip_p),
        v2.RandomApply([v2.ColorJitter(*a.jitter)], p=a.jitter_p),
        v2.RandomGrayscale(a.gray_p),
        v2.RandomApply([v2.GaussianBlur(kernel, a.blur_sigma)], p=a.blur_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
    return {"pil_v1": v1, "pil_v2": tv2}


def pil_runner(batch: torch.Tensor, transform: Callable, views: int) -> Callable[[], None]:
    """``views`` views of ``batch`` by ``transform``, one PIL image at a time, collated with ``torch.stack``;
    already called once on a few images (the warm-up: the pipeline has no per-batch state)."""
    from PIL import Image

    pils = [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in batch]  # the dataset's PIL images
    for im in pils[:4]:
        transform(im)

    def once() -> None:
        for _ in range(views):
            torch.stack([transform(im) for im in pils])

    return once


# -- FLOPs ------------------------------------------------------------------------------------------
def count_step_flops(s: Any, idx: torch.Tensor) -> dict[str, int]:
    """FlopCounterMode counts for the batch ``idx``: ``step`` (the model FLOPs of one training step's
    forward + backward), ``augment`` (making its views: the blur's convolutions, on the CPU only
    for the samples drawn for it) and ``encoder_forward`` (the backbone on one view, no gradient:
    what linear evaluation runs per image).

    The step is the method class's own eager ``step`` (fast-path wrappers bypassed; they do not
    change what is computed) and its backward; no optimiser step is taken and the gradients are
    cleared. Optimiser, EMA and queue updates are element-wise and not counted. On the CPU it runs
    on one thread: nothing here is timed, and the small ops of a small batch spend most of their
    time synchronising threads on a shared machine (4 full-width images on this project's 2-core
    machine beside other jobs: 3 s on one thread, 19 s on two).
    """
    if s.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _count_step_flops(s, idx)
        finally:
            torch.set_num_threads(threads)
    return _count_step_flops(s, idx)


def _count_step_flops(s: Any, idx: torch.Tensor) -> dict[str, int]:
    from torch.utils.flop_counter import FlopCounterMode

    x = s.images[idx]
    gen = torch.Generator(device=s.device).manual_seed(12345)
    with FlopCounterMode(display=False) as aug_counter:
        views = [s.augment(x, gen) for _ in range(s.method.n_views)]
    with FlopCounterMode(display=False) as counter:
        out = type(s.method).step(s.method, views, s.labels[idx], gen)
        out.loss.backward()
    s.optimizer.zero_grad(set_to_none=True)
    s.method.discard_pushes()
    was_training = s.method.backbone.training
    s.method.backbone.eval()
    with FlopCounterMode(display=False) as enc_counter, torch.no_grad():
        s.method.backbone(views[0])
    s.method.backbone.train(was_training)
    return {"step": int(counter.get_total_flops()), "augment": int(aug_counter.get_total_flops()),
            "encoder_forward": int(enc_counter.get_total_flops())}


def flops_only(method: str = "mnclglf", variant: str = "paper", h: int = 32, classes: int = 10,
               batch_size: int = 16, width: float = 1.0, params_path: str | Path | None = "params.yaml", *,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FLOP counts of :func:`count_step_flops` per image, on the CPU, without timing anything.

    Per-image FLOPs hardly depend on the batch size (only the N×N logits of the losses do,
    far below 0.1% of a step at 32 px), so a small batch gives the figure of batch 256.
    """
    from mnclglf.train import pretrain

    cfg = bench_config(method, variant, h, batch_size, "cpu", "fp32", width, params_path, 0, None, overrides)
    images, labels = synthetic(max(batch_size, 2), h, h, classes, torch.device("cpu"), cfg.seed)
    s = pretrain.setup(cfg, images, labels, classes)
    counts = count_step_flops(s, torch.arange(batch_size))
    return {"schema": SCHEMA, "kind": "flops",
            "config": {"method": method, "variant": variant if method == "mnclglf" else None, "run": cfg.method,
                       "h": h, "image_size": cfg.augment.size or h, "classes": classes, "batch_size": batch_size,
                       "width": width, "stem": cfg.model.stem},
            "flops_per_image": counts["step"] / batch_size,
            "encoder_forward_flops_per_image": counts["encoder_forward"] / batch_size,
            "augment_flops_per_image": counts["augment"] / batch_size}


# -- the benchmark ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchRun:
    """What every phase of :func:`run_bench` shares: the training setup and the batches it steps on."""

    s: Any                                # pretrain.Setup on synthetic data
    cfg: config.RunConfig
    device: torch.device
    batches: list[torch.Tensor]           # one per step: the FLOP step, warm-up, timed steps
    warmup: int
    steps: int
    batch_size: int
    say: Callable[[str], None]

    @property
    def total(self) -> int:
        return len(self.batches)

    def step(self, i: int) -> float:
        """Seconds of the package's training step ``i`` (on batch ``1 + i``: batch 0 counts FLOPs)."""
        from mnclglf.train import pretrain

        return timed(lambda: pretrain.train_step(self.s, self.batches[1 + i], i, self.total), self.device)


def bench_settings(n: int, h: int, w: int, batch_size: int | None, device: str | None, precision: str,
                   steps: int | None, warmup: int | None) -> dict[str, Any]:
    """The device and the timing knobs of a bench, its defaults filled in; bad values are UserErrors."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dev_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_name not in ("cpu", "cuda"):
        raise UserError(f"--device {dev_name!r}: expected cpu or cuda")
    if dev_name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    defaults = GPU_DEFAULTS if dev_name == "cuda" else CPU_DEFAULTS
    out = {**defaults, "device": dev_name, "batch_size": batch_size or defaults["batch_size"],
           "steps": defaults["steps"] if steps is None else steps,
           "warmup": defaults["warmup"] if warmup is None else warmup}
    if out["steps"] < 1 or out["warmup"] < 0:
        raise UserError(f"--steps {out['steps']} / --warmup {out['warmup']}: need steps >= 1 and warmup >= 0")
    if out["batch_size"] > n:
        raise UserError(f"--batch-size {out['batch_size']}: larger than the {n} synthetic images")
    if h != w:
        raise UserError(f"--shape: square images only (H = W), got {h}×{w}")
    return out


def measure_first_steps(run: BenchRun, flop_images: int, rss0: int | None, maxrss0: int
                        ) -> tuple[dict[str, int], str, float, dict[str, Any]]:
    """FLOP count (also the first warm-up), warm-up, the sync-debug step and the first timed step.

    Returns the FLOP counts, the host-sync verdict, the first step's seconds and the memory
    figures: the RSS peak from after setup through the first timed step, and the step's own.
    """
    rss_after_setup = rss_bytes()
    whole = RssSampler().__enter__()
    t0 = time.perf_counter()
    counts = count_step_flops(run.s, run.batches[0][:flop_images])
    run.say(f"FLOP count step: {time.perf_counter() - t0:.1f}s")
    rss_before_steps = rss_bytes()
    with RssSampler() as sampler:
        for i in range(run.warmup):
            run.step(i)
        host_sync = sync_debug_step(run.s, run.batches[1 + run.warmup], run.warmup, run.total)
        run.say(f"sync-debug step: {host_sync}")
        first = run.step(run.warmup)
    whole.__exit__()
    memory: dict[str, Any] = {}
    if run.device.type == "cuda":
        memory["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(run.device)
        memory["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(run.device)
    memory.update({
        "rss_before_setup_bytes": rss0, "rss_after_setup_bytes": rss_after_setup,
        "rss_peak_bytes": whole.peak,  # from after setup through the FLOP step, warm-up and first step
        "rss_peak_over_setup_bytes": (whole.peak - rss_after_setup) if rss_after_setup else None,
        "rss_before_steps_bytes": rss_before_steps,
        "rss_step_peak_bytes": sampler.peak,
        "rss_step_peak_delta_bytes": (sampler.peak - rss_before_steps) if rss_before_steps else None,
        "ru_maxrss_bytes": maxrss_bytes(), "ru_maxrss_delta_bytes": maxrss_bytes() - maxrss0,
    })
    run.say(f"step 1: {first:.2f}s")
    return counts, host_sync, first, memory


def build_reference(run: BenchRun, classes: int) -> tuple[Any, str | None]:
    """The plain eager Algorithm 1 on the same initial weights, or None and why there is none."""
    from mnclglf.bench_reference import AlgorithmOne, check_supported

    if run.cfg.method != "mnclglf":
        return None, "the Algorithm 1 reference exists for the mnclglf paper variant only"
    try:
        check_supported(run.cfg)
    except UserError as exc:
        return None, str(exc)
    from mnclglf.methods import method_class
    from mnclglf.train.env import seed_everything

    seed_everything(run.cfg.seed)  # as pretrain.setup does before building: the same initial weights
    return AlgorithmOne(method_class("mnclglf")(run.cfg, classes).to(run.device), run.cfg), None


def time_steps(run: BenchRun, first: float, ref: Any) -> tuple[list[float], list[float]]:
    """The package's timed steps and the reference's, interleaved so that both see the same load,
    the order alternating (reference first on odd rounds) so that neither always runs second."""
    ref_gen = torch.Generator(device=run.device).manual_seed(run.cfg.seed + 1)
    step_times, ref_times = [first], []

    def ref_step(i: int) -> float:
        return timed(lambda: ref.train_step(run.s.images, run.batches[1 + i], run.s.augment, ref_gen, i,
                                            run.total), run.device)

    if ref is not None:
        for i in range(run.warmup):
            ref_step(i)
        ref_times.append(ref_step(run.warmup))
        run.say(f"reference step 1: {ref_times[-1]:.2f}s")
    for j in range(1, run.steps):
        i = run.warmup + j
        if ref is not None and j % 2:
            ref_times.append(ref_step(i))
        step_times.append(run.step(i))
        if ref is not None and not j % 2:
            ref_times.append(ref_step(i))
        run.say(f"step {j + 1}: {step_times[-1]:.2f}s" + (f", reference {ref_times[-1]:.2f}s" if ref_times else ""))
    return step_times, ref_times


def time_augment(run: BenchRun, h: int, pil: bool, aug_reps: int, pil_reps: int, pil_images: int
                 ) -> tuple[dict[str, Any], Any]:
    """Three views by the batched augmentation (the training path) against the per-image PIL
    pipelines, repetitions interleaved; returns the figures and the augmentation timed."""
    from mnclglf.data.augment import SSLAugment, make_normalizer

    s, cfg = run.s, run.cfg
    aug = s.augment if not s.method.uses_labels else SSLAugment(
        cfg.augment, make_normalizer(cfg.augment.normalize, s.images, run.device), h)
    gen = torch.Generator(device=run.device).manual_seed(7)
    idx = run.batches[-1]

    def batched() -> None:
        x = s.images[idx]
        for _ in range(3):
            aug(x, gen)

    batched()  # warm-up
    pil_runs: dict[str, Callable[[], None]] = {}
    if pil:
        batch_cpu = s.images[idx[:pil_images]].cpu()
        pil_runs = {k: pil_runner(batch_cpu, t, 3)
                    for k, t in pil_pipelines(cfg, cfg.augment.size or h, s.mean_std).items()}
    aug_times: list[float] = []
    pil_times: dict[str, list[float]] = {k: [] for k in pil_runs}
    for r in range(max(aug_reps, pil_reps if pil else 0)):  # interleaved: both see the same load
        if r < aug_reps:
            aug_times.append(timed(batched, run.device))
        for k, once in pil_runs.items() if r < pil_reps else ():
            pil_times[k].append(timed(once, torch.device("cpu")) * run.batch_size / pil_images)
    augment: dict[str, Any] = {"views": 3, "batch_size": run.batch_size, "size": cfg.augment.size or h,
                               "batched": summary(aug_times, 3 * run.batch_size)}
    if pil:
        for k, ts in pil_times.items():
            augment[k] = summary(ts, 3 * run.batch_size) | {"images_timed": pil_images}
        best = min(augment[k]["ms_median"] for k in pil_runs)
        augment["speedup_vs_best_pil"] = best / augment["batched"]["ms_median"]
        augment["speedup_vs_pil_v1"] = augment["pil_v1"]["ms_median"] / augment["batched"]["ms_median"]
    run.say(f"augment: batched {augment['batched']['ms_median']:.1f} ms / 3 views")
    return augment, aug


def step_figures(run: BenchRun, step_times: list[float], counts: dict[str, int], flop_images: int,
                 augment: dict[str, Any], step_augment: bool) -> dict[str, Any]:
    """Images/s, FLOPs, achieved FLOP/s and share of peak, and the augmentation's share of the step
    (None where the timed augmentation is not the step's: supervised runs crop and flip only)."""
    step = summary(step_times, run.batch_size)
    sec = step["ms_median"] / 1e3
    peak = peak_bf16(device_name(run.device)) if run.device.type == "cuda" else None
    per_image = counts["step"] / flop_images
    step.update({
        "flops_counted_on_images": flop_images,
        "flops_per_image": per_image,
        "flops_per_step": per_image * run.batch_size,
        "augment_flops_per_image": counts["augment"] / flop_images,
        "encoder_forward_flops_per_image": counts["encoder_forward"] / flop_images,
        "achieved_flops_per_s": per_image * run.batch_size / sec,
        "peak_bf16_flops_per_s": peak,
        "fraction_of_peak_bf16": (per_image * run.batch_size / sec / peak) if peak else None,
    })
    views = run.s.method.n_views
    step["augment_views"] = views
    share = augment["batched"]["ms_median"] / 3 * views / step["ms_median"]
    step["augment_share"] = share if step_augment else None
    return step


def reference_figures(ref_times: list[float], step_times: list[float], step: dict[str, Any],
                      augment: dict[str, Any], pil: bool, batch_size: int) -> dict[str, Any]:
    """The reference's step against the package's (> 1: the package's step is faster), and its
    end to end time with the per-image PIL augmentation most SSL code uses."""
    r = summary(ref_times, batch_size)
    r["speedup_of_step"] = r["ms_median"] / step["ms_median"]
    r["speedup_of_step_paired"] = statistics.median(a / b for a, b in zip(ref_times, step_times))
    r["end_to_end_with_pil_ms"] = r["ms_median"] - augment["batched"]["ms_median"] + (
        min(augment["pil_v1"]["ms_median"], augment["pil_v2"]["ms_median"]) if pil else 0.0)
    return r


def bench_setup(cfg: config.RunConfig, shape: tuple[int, int, int, int], device: torch.device, warmup: int,
                steps: int, batch_size: int, say: Callable[[str], None]) -> BenchRun:
    """The training path on synthetic uint8 data of ``shape`` (N, H, W, classes), and its batches."""
    from mnclglf.train import fast, pretrain

    n, h, w, classes = shape
    images, labels = synthetic(n, h, w, classes, device, cfg.seed)
    s = fast.apply_speed(pretrain.setup(cfg, images, labels, classes))  # no-op: setup applied it
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    order = torch.Generator().manual_seed(cfg.seed)
    batches = [torch.randint(0, n, (batch_size,), generator=order).to(device) for _ in range(1 + warmup + steps)]
    return BenchRun(s, cfg, device, batches, warmup, steps, batch_size, say)


def device_record(device: torch.device, load_start: list[float] | None) -> dict[str, Any]:
    name = device_name(device)
    return {"type": device.type, "name": name, "short": short_name(name), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_avg_start": load_start, "load_avg_end": load_avg()}


def run_bench(method: str = "mnclglf", variant: str = "paper", n: int = 50000, h: int = 32, w: int = 32,
              classes: int = 10, batch_size: int | None = None, device: str | None = None, precision: str = "auto",
              width: float = 1.0, steps: int | None = None, warmup: int | None = None,
              params_path: str | Path | None = "params.yaml", *, threads: int = 0,
              speed: dict[str, bool] | None = None, reference: bool = True, pil: bool = True,
              aug_reps: int | None = None, pil_reps: int | None = None, pil_images: int | None = None,
              flop_images: int | None = None, overrides: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark one configuration; returns the result as a JSON-able dict (see the module docstring).

    None takes the device's default (``CPU_DEFAULTS``/``GPU_DEFAULTS``; ``device``: CUDA when
    available). ``speed`` sets keys of the ``speed`` section; ``overrides`` is deep-merged over
    the parameters (tests use it for tiny nets). FLOPs are counted on ``flop_images`` of a batch
    (per-image FLOPs do not depend on the batch but for the N×N logits, < 0.1 %), the PIL
    pipelines timed on ``pil_images`` and scaled to the batch.
    """
    from mnclglf.train import fast

    say = log or (lambda _msg: None)
    k = bench_settings(n, h, w, batch_size, device, precision, steps, warmup)
    batch_size, steps, warmup = k["batch_size"], k["steps"], k["warmup"]
    pil_images = min(batch_size, pil_images or k["pil_images"] or batch_size)
    flop_images = min(batch_size, flop_images or k["flop_images"] or batch_size)
    cfg = bench_config(method, variant, h, batch_size, k["device"], precision, width, params_path, threads, speed,
                       overrides)
    torch_device = torch.device(k["device"])
    load_start = load_avg()
    t_start = time.perf_counter()

    rss0, maxrss0 = rss_bytes(), maxrss_bytes()
    run = bench_setup(cfg, (n, h, w, classes), torch_device, warmup, steps, batch_size, say)
    s = run.s
    say(f"setup done in {time.perf_counter() - t_start:.1f}s; threads {torch.get_num_threads()}")

    counts, host_sync, first, memory = measure_first_steps(run, flop_images, rss0, maxrss0)
    ref, ref_note = build_reference(run, classes) if reference else (None, None)
    step_times, ref_times = time_steps(run, first, ref)
    augment, aug = time_augment(run, h, pil, aug_reps or k["aug_reps"], pil_reps or k["pil_reps"], pil_images)
    step = step_figures(run, step_times, counts, flop_images, augment, aug is s.augment)
    step.update({"memory": memory, "host_sync": host_sync})
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_record(torch_device, load_start),
        "config": {"method": method, "variant": variant if method == "mnclglf" else None, "run": cfg.method,
                   "n": n, "h": h, "w": w, "classes": classes, "batch_size": batch_size, "width": width,
                   "precision": precision, "precision_effective": fast.applied(s)["precision"],
                   "steps": steps, "warmup": warmup, "image_size": cfg.augment.size or h,
                   "speed": config.to_dict(cfg.speed), "speed_applied": fast.applied(s),
                   "params": str(params_path) if params_path else None},
        "augment": augment,
        "step": step,
    }
    if ref_times:
        result["reference"] = reference_figures(ref_times, step_times, step, augment, pil, batch_size)
    elif ref_note:
        result["reference"] = {"skipped": ref_note}
    result["wall_s"] = time.perf_counter() - t_start
    return result


# -- ablation of the fast paths ------------------------------------------------------------------------
SPEED_PATHS = ("channels_last", "cudnn_benchmark", "fused_optimizer", "inference_mode_targets", "compile", "bf16",
               "tf32")
#: The plain eager fp32 step every path of the ablation is measured against.
PLAIN_SPEED = {"precision": "fp32", "channels_last": False, "cudnn_benchmark": False, "fused_optimizer": False}


def run_speed_ablation(method: str = "mnclglf", variant: str = "paper", n: int = 4096, h: int = 32,
                       classes: int = 10, batch_size: int | None = None, device: str | None = None,
                       width: float = 1.0, steps: int = 2, warmup: int = 1,
                       params_path: str | Path | None = "params.yaml", *, paths: tuple[str, ...] = SPEED_PATHS,
                       threads: int = 0, overrides: dict[str, Any] | None = None,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each fast path alone against the plain step, on the same shapes, steps interleaved round-robin.

    One Setup per variant (the baseline and each path on its own); every round times one
    step of each, in an order rotated round by round, so a change in the machine's load hits
    all of them alike.
    """
    from mnclglf.train import fast, pretrain

    say = log or (lambda _msg: None)
    dev_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_device = torch.device(dev_name)
    batch_size = batch_size or (GPU_DEFAULTS if dev_name == "cuda" else CPU_DEFAULTS)["batch_size"]
    cuda_only = ("bf16", "tf32", "cudnn_benchmark")
    variants = {"plain": PLAIN_SPEED} | {
        p: PLAIN_SPEED | ({"precision": p} if p in ("bf16", "tf32") else {p: True})
        for p in paths if p not in cuda_only or dev_name == "cuda"}
    setups: dict[str, Any] = {}
    for label, sp in variants.items():
        cfg = bench_config(method, variant, h, batch_size, dev_name, sp["precision"], width, params_path, threads,
                           sp, overrides)
        images, labels = synthetic(n, h, h, classes, torch_device, cfg.seed)
        setups[label] = fast.apply_speed(pretrain.setup(cfg, images, labels, classes))
    order = torch.Generator().manual_seed(0)
    total = warmup + steps
    batches = [torch.randint(0, n, (batch_size,), generator=order).to(torch_device) for _ in range(total)]
    times: dict[str, list[float]] = {k: [] for k in setups}
    losses: dict[str, list[float]] = {k: [] for k in setups}
    load_start = load_avg()
    labels_order = list(setups)
    for i in range(total):
        k = i % len(labels_order)  # rotate who goes first, round by round
        for label in labels_order[k:] + labels_order[:k]:
            s = setups[label]
            out: list[Any] = []
            dt = timed(lambda s=s, i=i: out.append(pretrain.train_step(s, batches[i], i, total)), torch_device)
            losses[label].append(float(out[0][0]))
            if i >= warmup:
                times[label].append(dt)
            say(f"round {i + 1}/{total} {label}: {dt:.2f}s")
    base = statistics.median(times["plain"])
    rows = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        rows[label] = {"ms_median": med * 1e3, "times_s": ts, "speedup": base / med,
                       "applied": fast.applied(setups[label]), "losses": losses[label]}
    return {"schema": SCHEMA, "kind": "speed_ablation",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": {"type": torch_device.type, "name": device_name(torch_device),
                       "threads": torch.get_num_threads(), "load_avg_start": load_start, "load_avg_end": load_avg()},
            "config": {"method": method, "variant": variant, "n": n, "h": h, "batch_size": batch_size,
                       "width": width, "steps": steps, "warmup": warmup},
            "paths": rows}


# -- output -----------------------------------------------------------------------------------------------
def _fmt_flops(v: float | None) -> str:
    if v is None:
        return "—"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} "


def _fmt_bytes(v: int | None) -> str:
    return "—" if v is None else f"{v / 2**20:,.0f} MiB"


def render(result: dict[str, Any]) -> Any:
    """A rich Table of one :func:`run_bench` result."""
    from rich.table import Table

    c, d, st, au = result["config"], result["device"], result["step"], result["augment"]
    title = (f"bench {c['run']} — {c['n']}×{c['h']}×{c['w']}, {c['classes']} classes, batch {c['batch_size']}, "
             f"width {c['width']}, {c['precision_effective']} on {d['name']} ({d['threads']} threads)")
    t = Table(title=title)
    for col, just in (("what", "left"), ("ms", "right"), ("images/s", "right"), ("notes", "left")):
        t.add_column(col, justify=just)
    b = au["batched"]
    t.add_row("augment ×3 views, batched", f"{b['ms_median']:.1f}", f"{b['images_per_s']:,.0f}",
              f"median of {b['n']}")
    for k in ("pil_v1", "pil_v2"):
        if k in au:
            part = (f", timed on {au[k]['images_timed']} images" if au[k].get("images_timed", c["batch_size"])
                    < c["batch_size"] else "")
            t.add_row(f"augment ×3 views, per-image {k.replace('_', ' ')}", f"{au[k]['ms_median']:.1f}",
                      f"{au[k]['images_per_s']:,.0f}", f"median of {au[k]['n']}{part}, single process")
    if "speedup_vs_best_pil" in au:
        t.add_row("  batched / best per-image", "", "", f"{au['speedup_vs_best_pil']:.2f}×")
    mem = st["memory"]
    mem_note = (f"peak {_fmt_bytes(mem['cuda_max_allocated_bytes'])} allocated" if "cuda_max_allocated_bytes" in mem
                else f"RSS peak {_fmt_bytes(mem.get('rss_peak_bytes'))} "
                     f"(+{_fmt_bytes(mem.get('rss_peak_over_setup_bytes'))} over the set-up data and model), "
                     f"ru_maxrss {_fmt_bytes(mem['ru_maxrss_bytes'])}")
    t.add_row("training step (train_step)", f"{st['ms_median']:.1f}", f"{st['images_per_s']:,.1f}",
              f"median of {st['n']}; {mem_note}")
    if st.get("augment_share") is not None:
        t.add_row("  augment share of step", "", "", f"{st['augment_share'] * 100:.1f}% "
                  f"({st['augment_views']} views at the batched median per view)")
    peak = f", {st['fraction_of_peak_bf16'] * 100:.1f}% of bf16 peak" if st["fraction_of_peak_bf16"] else ""
    t.add_row("  model FLOPs", "", "", f"{_fmt_flops(st['flops_per_image'])}FLOP/image (fwd+bwd), "
                                       f"{_fmt_flops(st['achieved_flops_per_s'])}FLOP/s achieved{peak}")
    ref = result.get("reference")
    if ref and "ms_median" in ref:
        t.add_row("Algorithm 1, plain eager", f"{ref['ms_median']:.1f}", f"{ref['images_per_s']:,.1f}",
                  f"median of {ref['n']}, interleaved")
        t.add_row("  reference / step", "", "", f"{ref['speedup_of_step']:.3f}× "
                                                f"(paired {ref['speedup_of_step_paired']:.3f}×)")
    elif ref:
        t.add_row("Algorithm 1 reference", "", "", ref["skipped"])
    applied = ", ".join(f"{k}={v}" for k, v in c["speed_applied"].items() if v != "off") or "none"
    t.caption = f"fast paths: {applied}; load avg {d['load_avg_start']} → {d['load_avg_end']}; wall {result['wall_s']:.0f}s"
    return t


def run_key(r: dict[str, Any]) -> tuple:
    """What makes two results the same run for ``--append`` (the timed and warm-up steps included:
    a 1-step run does not replace a 4-step one)."""
    c = r["config"]
    return (r.get("kind", "bench"), c["run"], c.get("n"), c["h"], c.get("w"), c["classes"], c["batch_size"],
            c["width"], c.get("precision"), json.dumps(c.get("speed"), sort_keys=True),
            r.get("device", {}).get("name"), c.get("steps"), c.get("warmup"))


def write_json(path: str | Path, result: dict[str, Any], append: bool = False) -> Path:
    """Write ``{"schema", "runs": [result]}``; with ``append``, add to (or replace the same run in) the file."""
    path = Path(path)
    runs: list[dict[str, Any]] = []
    if append and path.is_file():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{path}: not a bench JSON file; cannot --append") from None
        runs = [r for r in runs if "config" not in r or run_key(r) != run_key(result)]
    runs.append(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "runs": runs}, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def parse_shape(shape: str) -> tuple[int, int, int, int]:
    """``N,H,W,C`` (images, height, width, classes) → four ints."""
    try:
        parts = tuple(int(p) for p in shape.replace("x", ",").replace("×", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise UserError(f"--shape {shape!r}: expected N,H,W,C (images, height, width, classes), e.g. 50000,32,32,10")
    return parts  # type: ignore[return-value]


def parse_speed(items: tuple[str, ...] | list[str] | None) -> dict[str, bool | str]:
    """``("channels_last=true", "compile=0", "fused_optimizer=auto")`` → the ``speed`` keys they set.

    ``precision`` is the bench's own ``--precision`` option, not a ``--speed`` key.
    """
    out: dict[str, bool | str] = {}
    allowed = [f.name for f in dataclasses.fields(config.SpeedConfig) if f.name != "precision"]
    for item in items or ():
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in allowed:
            raise UserError(f"--speed {item!r}: unknown fast path; allowed: {', '.join(allowed)}")
        v = value.strip().lower() or "true"
        if v not in ("1", "0", "true", "false", "yes", "no", "on", "off", "auto"):
            raise UserError(f"--speed {item!r}: expected KEY=true, KEY=false or KEY=auto")
        out[key] = "auto" if v == "auto" else v in ("1", "true", "yes", "on")
    return out


def bench_command(method: str = "mnclglf", variant: str = "paper", shape: str = "50000,32,32,10",
                  batch_size: int | None = None, device: str | None = None, precision: str = "auto",
                  width: float = 1.0, steps: int | None = None, warmup: int | None = None,
                  json_path: str | None = None, params_path: str = "params.yaml", threads: int = 0,
                  speed: tuple[str, ...] = (), reference: bool = True, pil: bool = True, append: bool = False,
                  quiet: bool = False, flops: bool = False) -> dict[str, Any]:
    """What ``mnclglf bench`` does: run, print the table, write the JSON; returns the result.

    ``flops``: count the FLOPs per image only (CPU, batch ``batch_size`` or 16), no timing.
    """
    from rich.console import Console

    console = Console(stderr=False)
    n, h, w, classes = parse_shape(shape)
    if flops:
        result = flops_only(method, variant, h, classes, batch_size or 16, width, params_path)
        console.print(f"{result['config']['run']} at {result['config']['image_size']} px, width {width}: "
                      f"{_fmt_flops(result['flops_per_image'])}FLOP/image per training step (fwd+bwd), "
                      f"{_fmt_flops(result['encoder_forward_flops_per_image'])}FLOP/image encoder forward")
        if json_path:
            console.print(f"json: {write_json(json_path, result, append=append)}")
        return result
    log = None if quiet else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    result = run_bench(method, variant, n, h, w, classes, batch_size, device, precision, width, steps, warmup,
                       params_path, threads=threads, speed=parse_speed(speed), reference=reference, pil=pil, log=log)
    result["command"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])  # what produced the JSON
    console.print(render(result))
    if json_path:
        out = write_json(json_path, result, append=append)
        console.print(f"json: {out}")
    return result


if __name__ == "__main__":  # python -m mnclglf.bench, the same defaults as the CLI command
    import click

    @click.command()
    @click.option("--method", default="mnclglf", show_default=True)
    @click.option("--variant", default="paper", show_default=True)
    @click.option("--shape", default="50000,32,32,10", show_default=True)
    @click.option("--batch-size", type=int, default=None)
    @click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
    @click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
    @click.option("--width", type=float, default=1.0, show_default=True)
    @click.option("--steps", type=int, default=None)
    @click.option("--warmup", type=int, default=None)
    @click.option("--json", "json_path", default=None)
    @click.option("--params", "params_path", default="params.yaml", show_default=True)
    @click.option("--threads", type=int, default=0, show_default=True)
    @click.option("--speed", multiple=True)
    @click.option("--reference/--no-reference", default=True)
    @click.option("--pil/--no-pil", default=True)
    @click.option("--append", is_flag=True)
    @click.option("--quiet", is_flag=True)
    @click.option("--flops", is_flag=True)
    def _main(**kw: Any) -> None:
        bench_command(**kw)

    try:
        _main()
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
