"""Cost of the `released` MNCLGLF variant against the `paper` one (numbers for the README).

1. Throughput: images/s of the training step (`train.pretrain.train_step`: three
   augmented views, the step, the optimiser) of the smoke-profile runs
   `mnclglf-released` (32-px views, width 0.125) and `mnclglf` (16-px digits), on
   synthetic 16×16 uint8 images, on this machine's CPU (median step time).
2. FLOPs per image of one training step (forward + backward of `method.step`, the
   augmentation excluded), counted by `torch.utils.flop_counter.FlopCounterMode`, for
   the paper-profile runs: `mnclglf-released` (224 px, ImageNet stem, full-width
   ResNet-18) and `mnclglf` (32 px, CIFAR stem), plus the backbone's forward alone;
   and the same for the two smoke-profile runs of (1).

    .venv/bin/python scripts/measure_released.py [--threads 1] [--steps 10] [--flop-batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mnclglf import config
from mnclglf.methods.mnclglf import MNCLGLF
from mnclglf.train import pretrain as pt

ROOT = Path(__file__).resolve().parents[1]


def throughput(raw: dict, run: str, steps: int, threads: int) -> tuple[float, config.RunConfig]:
    cfg = config.run_config(raw, "digits", run)
    n = cfg.pretrain.batch_size
    images = torch.randint(0, 256, (2 * n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    s = pt.setup(cfg, images, torch.zeros(2 * n, dtype=torch.long), 10)
    torch.set_num_threads(threads)  # after setup, which applies the profile's own `threads`
    idx = torch.arange(n)
    for step in range(2):  # warm-up
        pt.train_step(s, idx, step, steps + 2)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        pt.train_step(s, idx, step + 2, steps + 2)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), cfg  # the median step: robust to other processes on a shared CPU


def flops_per_image(raw: dict, run: str, batch: int, dataset: str = "cifar10"
                    ) -> tuple[float, float, int, config.RunConfig]:
    cfg = config.run_config(raw, dataset, run)
    size = cfg.augment.size or {"cifar10": 32, "digits": 16}[dataset]
    torch.manual_seed(0)
    m = MNCLGLF(cfg, 10).train()
    views = [torch.randn(batch, 3, size, size) for _ in range(3)]
    with FlopCounterMode(display=False) as counter:
        out = m.step(views, None, torch.Generator())
        out.loss.backward()
    step = counter.get_total_flops() / batch
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m.backbone(views[0])
    return step, counter.get_total_flops() / batch, size, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for the throughput runs")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run (after 2 warm-up steps)")
    ap.add_argument("--flop-batch", type=int, default=8, help="batch of the FLOP count (per image = total / batch)")
    ap.add_argument("--skip-flops", action="store_true")
    args = ap.parse_args()
    raw = config.read_params(args.params)

    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for run in ("mnclglf-released", "mnclglf"):
        ips, cfg = throughput(raw, run, args.steps, args.threads)
        print(f"throughput  {run:17s} digits smoke: {cfg.augment.size or 16:3d} px, width {cfg.model.width}, "
              f"batch {cfg.pretrain.batch_size}: {ips:8.1f} images/s")
    if args.skip_flops:
        return
    torch.set_num_threads(args.threads)
    for dataset in ("cifar10", "digits"):
        for run in ("mnclglf-released", "mnclglf"):
            step, fwd, size, cfg = flops_per_image(raw, run, args.flop_batch, dataset)
            print(f"flops       {run:17s} {dataset:7s}: {size:3d} px, {cfg.model.stem:8s} stem, width "
                  f"{cfg.model.width:5}: {step / 1e9:8.3f} GFLOP/image per training step (fwd+bwd), "
                  f"backbone fwd {fwd / 1e9:6.3f} GFLOP/image")


if __name__ == "__main__":
    main()
