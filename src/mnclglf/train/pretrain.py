"""Self-supervised pretraining: the loop every method of Table 3 runs under.

The split lives on the training device as uint8; each epoch's order is drawn on the CPU
and copied to the device once, and each step takes a batch of those indices, makes the
method's views with batched augmentation, calls ``method.step`` and the optimiser.
Scalars are summed on the device and read once per epoch: a step neither syncs with the
host nor copies anything across, for every method (tests/test_no_host_sync.py runs the
step on device tensors and records every sync and copy). Checkpoints hold model,
momentum network, queue, optimiser, step and every RNG state, so a run killed at any
point resumes to the same final weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnclglf import ops
from mnclglf.config import RunConfig, base_method, to_dict
from mnclglf.data.augment import CropFlipAugment, SSLAugment, make_normalizer
from mnclglf.data.store import load_meta, load_split
from mnclglf.errors import DivergedError, UserError
from mnclglf.io import link_or_copy, remove_temporaries, write_json
from mnclglf.methods import Method, build_method
from mnclglf.models import ResNet18
from mnclglf.paths import KEPT_ENCODER
from mnclglf.train import checkpoint as ckpt
from mnclglf.train.fast import applied, apply_speed, start_line
from mnclglf.train.knn import KnnMonitor
from mnclglf.train.env import batches, make_generator, pick_device, seed_everything
from mnclglf.train.progress import announce, bar
from mnclglf.train.schedule import cosine_lr, set_lr

ENCODER_FILE = "encoder.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Setup:
    """Everything a pretraining run builds before its first step (also used by the benchmark)."""

    cfg: RunConfig
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    method: Method
    optimizer: torch.optim.Optimizer
    augment: Any
    gens: dict[str, torch.Generator]
    mean_std: tuple[tuple[float, ...], tuple[float, ...]]


def build_optimizer(cfg: RunConfig, method: Method) -> torch.optim.Optimizer:
    p = cfg.pretrain
    groups = method.param_groups()
    if p.fixed_predictor_lr:  # the released scheduler: the predictor keeps its initial lr
        for group in groups:
            if group.get("name") == "predictor":
                group["fixed_lr"] = True
    return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def variant_of(cfg: RunConfig) -> str | None:
    """The MNCLGLF variant label of a run (``paper``, ``released``); None for the other methods."""
    return cfg.mnclglf.variant if base_method(cfg.method) == "mnclglf" else None


def setup(cfg: RunConfig, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Setup:
    device = pick_device(cfg.pretrain.device, cfg.dataset)
    if cfg.pretrain.threads:
        torch.set_num_threads(cfg.pretrain.threads)
    seed_everything(cfg.seed)
    method = build_method(cfg, num_classes).to(device)
    images, labels = images.to(device), labels.to(device)
    normalizer = make_normalizer(cfg.augment.normalize, images, device)
    size = images.shape[-1]
    if method.uses_labels:
        augment: Any = CropFlipAugment(cfg.augment.crop_scale, cfg.augment.flip_p, normalizer, cfg.augment.size or size,
                                       mode=cfg.augment.interpolation)
    else:
        augment = SSLAugment(cfg.augment, normalizer, size)
    gens = {"order": make_generator(torch.device("cpu"), cfg.seed), "augment": make_generator(device, cfg.seed + 1)}
    mean_std = (tuple(normalizer.mean.flatten().tolist()), tuple(normalizer.std.flatten().tolist()))
    return apply_speed(Setup(cfg, device, images, labels, num_classes, method, build_optimizer(cfg, method), augment, gens, mean_std))


def train_step(s: Setup, idx: torch.Tensor, step: int, total: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """One optimisation step on the batch ``idx``; returns device tensors only."""
    p = s.cfg.pretrain
    lr = cosine_lr(step, total, p.lr, p.final_lr, p.warmup_steps)
    set_lr(s.optimizer, lr)
    x = s.images[idx]
    views = [s.augment(x, s.gens["augment"]) for _ in range(s.method.n_views)]
    out = s.method.step(views, s.labels[idx], s.gens["augment"])
    s.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if p.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(s.method.parameters(), p.clip_grad_norm)
    s.optimizer.step()
    s.method.after_step()
    return out.loss.detach(), out.logs, out.embedding


def run_epoch(s: Setup, epoch: int, steps_per_epoch: int, total: int,
              advance: Callable[[], None] = lambda: None) -> dict[str, torch.Tensor]:
    """The steps of epoch ``epoch`` (from 1); returns the sums of the logged scalars, on the device.

    The epoch's order is drawn on the CPU and copied to the device once; the caller reads
    the sums once (tests/test_no_host_sync.py checks that nothing else crosses).
    """
    sums: dict[str, torch.Tensor] = {}
    order = batches(s.images.shape[0], s.cfg.pretrain.batch_size, s.gens["order"], device=s.device)
    for i, idx in enumerate(order):
        loss, logs, emb = train_step(s, idx, (epoch - 1) * steps_per_epoch + i, total)
        row = {"loss": loss, **logs}
        if emb is not None:
            row["embedding_std"] = ops.embedding_std(emb)
        for k, v in row.items():
            sums[k] = sums.get(k, 0) + v.float()
        advance()
    return sums


def initial_embedding_std(s: Setup, bs: int) -> float | None:
    """The collapse monitor before any update, measured on a throw-away copy (no state is touched)."""
    probe_method = copy.deepcopy(s.method)
    gen = torch.Generator(s.device).manual_seed(0)
    with torch.no_grad():
        views = [s.augment(s.images[:bs], gen) for _ in range(probe_method.n_views)]
        probe = probe_method.step(views, s.labels[:bs], gen)
    return float(ops.embedding_std(probe.embedding)) if probe.embedding is not None else None


def encoder_payload(cfg: RunConfig, backbone: torch.nn.Module, epoch: int,
                    mean_std: tuple[tuple[float, ...], tuple[float, ...]], image_size: int) -> dict[str, Any]:
    """What linear-eval reads: backbone weights, its architecture, and the input normalisation.

    ``method`` is the method built (``mnclglf`` for ``mnclglf-released``), ``run`` the run's
    name (its runs/ and metrics/ folder), ``variant`` the MNCLGLF variant label.
    """
    return {
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "model": to_dict(cfg.model), "dataset": cfg.dataset, "method": base_method(cfg.method), "run": cfg.method,
        "variant": variant_of(cfg), "epoch": epoch,
        "normalize": {"mean": list(mean_std[0]), "std": list(mean_std[1])},
        "image_size": cfg.augment.size or image_size,
    }


def publish_kept_encoders(epochs: tuple[int, ...], ckpt_dir: Path, out_dir: Path) -> None:
    """Link the kept encoders from the checkpoint folder into the output folder.

    They are written to the checkpoint folder (DVC ``persist``) because DVC empties the output folder
    before it reruns a stage, and a run that resumes from its checkpoint does not pass the kept
    epochs again; each run, fresh or resumed, then publishes all of them.
    """
    for epoch in epochs:
        src = ckpt_dir / KEPT_ENCODER.format(epoch)
        if not src.is_file():
            raise UserError(f"{src}: the encoder kept at epoch {epoch} (pretrain.keep_epochs) is missing; delete "
                            f"{ckpt_dir} to pretrain this run again")
        link_or_copy(src, out_dir / KEPT_ENCODER.format(epoch))


def resume(s: Setup, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's states into the run; tensors that do not fit are one line."""
    try:
        s.method.load_state_dict(state["method"])
        s.optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"], s.gens)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: does not fit this run ({reason}); delete it to start "
                        f"afresh") from None


def start_or_resume(s: Setup, ckpt_dir: Path, fingerprint: str) -> tuple[int, list[dict[str, Any]], float | None]:
    """(epochs done, history, initial collapse monitor) from this configuration's checkpoint, or a
    fresh start, whose stale kept encoders of an earlier configuration are removed first."""
    ckpt_path = ckpt_dir / CHECKPOINT_FILE
    remove_temporaries(ckpt_dir)  # a write cut short by a kill
    state, note = ckpt.load_if_matching(ckpt_path, fingerprint)
    epoch0, history, init_std = 0, [], None
    if state is None:  # a fresh start: no kept encoder of an earlier configuration may be published
        for stale in ckpt_dir.glob(KEPT_ENCODER.format("*")):
            stale.unlink()
    else:
        resume(s, state, ckpt_path)
        epoch0, history, init_std = state["epoch"], state["history"], state["init_std"]
    if note:  # after the states loaded: a checkpoint that does not fit is one error line, not two
        announce(note)
    return epoch0, history, init_std


def epoch_entry(cfg: RunConfig, sums: dict[str, torch.Tensor], epoch: int, steps_per_epoch: int, total: int,
                seconds: float) -> dict[str, Any]:
    """The epoch's logged means (read from the device once), its last lr and its images/s."""
    p = cfg.pretrain
    return {"epoch": epoch, **{k: float(v) / steps_per_epoch for k, v in sums.items()},
            "lr": cosine_lr(epoch * steps_per_epoch - 1, total, p.lr, p.final_lr, p.warmup_steps),
            "images_per_s": steps_per_epoch * p.batch_size / seconds}


def stop_if_diverged(cfg: RunConfig, entry: dict[str, Any], ckpt_path: Path, last_good: int | None) -> None:
    if not math.isfinite(entry["loss"]):
        kept = (f"the last good checkpoint, {ckpt_path} (epoch {last_good}), is left as it "
                f"was" if last_good else "no checkpoint was written before it")
        raise DivergedError(f"pretraining {cfg.method} on {cfg.dataset} diverged: loss is "
                            f"{entry['loss']} at epoch {entry['epoch']}; {kept}")


def save_epoch(s: Setup, epoch: int, ckpt_dir: Path, state: dict[str, Any]) -> bool:
    """The kept encoder of ``epoch`` (into the persistent folder: a resumed run does not pass here
    again) and, when due, the checkpoint; whether a checkpoint was written."""
    cfg = s.cfg
    if epoch in cfg.pretrain.keep_epochs:
        ckpt.save(ckpt_dir / KEPT_ENCODER.format(epoch),
                  encoder_payload(cfg, s.method.backbone, epoch, s.mean_std, int(s.images.shape[-1])))
    if epoch % cfg.pretrain.checkpoint_every and epoch != cfg.pretrain.epochs:
        return False
    ckpt.save(ckpt_dir / CHECKPOINT_FILE, {
        **state, "epoch": epoch, "method": s.method.state_dict(), "optimizer": s.optimizer.state_dict(),
        "rng": ckpt.rng_state(s.gens),
    }, keep_previous=True)
    return True


def run_summary(s: Setup, history: list[dict[str, Any]], total: int, init_std: float | None,
                seconds: float) -> dict[str, Any]:
    """pretrain.json: the run, its final loss, the collapse monitor, its speed and arithmetic."""
    cfg = s.cfg
    stds = [h["embedding_std"] for h in history if "embedding_std" in h]
    return {
        "dataset": cfg.dataset, "method": cfg.method, "variant": variant_of(cfg),
        **({"mnclglf": to_dict(cfg.mnclglf)} if variant_of(cfg) else {}),
        "epochs": cfg.pretrain.epochs, "steps": total, "final_loss": history[-1]["loss"] if history else None,
        "embedding_std_init": init_std, "embedding_std_final": stds[-1] if stds else None,
        "embedding_std_min_ratio": (min(stds) / init_std) if stds and init_std else None,
        "images_per_s": (sum(h["images_per_s"] for h in history) / len(history)) if history else None,
        "wall_s_this_run": seconds,
        "device": str(s.device), "speed": applied(s),  # the arithmetic and fast paths that made this run
    }


def pretrain(cfg: RunConfig, out_dir: Path, ckpt_dir: Path, metrics_path: Path, progress: bool = True) -> dict[str, Any]:
    """Pretrain ``cfg.method`` on ``cfg.dataset``; write the encoder, DVCLive curves and a summary."""
    from mnclglf.train.logger import EpochLogger

    meta = load_meta(cfg.data_root, cfg.dataset)
    images, labels = load_split(cfg.data_root, cfg.dataset, "train")
    s = setup(cfg, images, labels, len(meta["classes"]))
    announce(start_line(f"pretrain {cfg.method}@{cfg.dataset}", s.device, applied(s)))
    n, bs = s.images.shape[0], cfg.pretrain.batch_size
    steps_per_epoch = n // bs
    if steps_per_epoch == 0 and cfg.pretrain.epochs > 0:
        raise UserError(f"pretrain.batch_size = {bs}: larger than the {n} training images of {cfg.dataset}")
    total = steps_per_epoch * cfg.pretrain.epochs
    fingerprint = ckpt.fingerprint(to_dict(cfg))
    ckpt_path = ckpt_dir / CHECKPOINT_FILE
    epoch0, history, init_std = start_or_resume(s, ckpt_dir, fingerprint)
    last_good = epoch0 or None
    logger = EpochLogger(out_dir / "live", history)
    if init_std is None and total:
        init_std = initial_embedding_std(s, bs)
    knn = KnnMonitor.for_run(s)
    start = time.perf_counter()
    with bar(progress) as pbar:
        task = pbar.add_task(f"pretrain {cfg.method}@{cfg.dataset}", total=total, completed=epoch0 * steps_per_epoch,
                             status="")
        for epoch in range(epoch0 + 1, cfg.pretrain.epochs + 1):
            t0 = time.perf_counter()
            sums = run_epoch(s, epoch, steps_per_epoch, total, lambda: pbar.advance(task))
            entry = epoch_entry(cfg, sums, epoch, steps_per_epoch, total, time.perf_counter() - t0)
            stop_if_diverged(cfg, entry, ckpt_path, last_good)
            if knn is not None:  # the online k-NN monitor, after the epoch's timing (train/knn.py)
                entry.update(knn.measure(s.method.backbone, epoch))
            history.append(entry)
            logger.log(entry)
            pbar.update(task, status=f"loss {entry['loss']:.3f}")
            state = {"fingerprint": fingerprint, "history": history, "init_std": init_std}
            if save_epoch(s, epoch, ckpt_dir, state):
                last_good = epoch
    logger.close()
    ckpt.drop_previous(ckpt_path)
    publish_kept_encoders(cfg.pretrain.keep_epochs, ckpt_dir, out_dir)
    ckpt.save(out_dir / ENCODER_FILE, encoder_payload(cfg, s.method.backbone, cfg.pretrain.epochs, s.mean_std,
                                                      int(s.images.shape[-1])))
    summary = run_summary(s, history, total, init_std, time.perf_counter() - start)
    write_json(metrics_path, summary)
    return summary


def save_random_init(cfg: RunConfig, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """The ``random-init`` row: the seeded, untrained encoder that every method's run starts from."""
    device = pick_device(cfg.pretrain.device, cfg.dataset)
    announce(start_line(f"pretrain {cfg.method}@{cfg.dataset}", device, {"precision": "none (no training)"}))
    images, _ = load_split(cfg.data_root, cfg.dataset, "train")
    seed_everything(cfg.seed)
    m = cfg.model
    backbone = ResNet18(m.stem, m.width, m.zero_init_residual)
    normalizer = make_normalizer(cfg.augment.normalize, images.to(device), device)
    mean_std = (tuple(normalizer.mean.flatten().tolist()), tuple(normalizer.std.flatten().tolist()))
    ckpt.save(out_dir / ENCODER_FILE, encoder_payload(cfg, backbone, 0, mean_std, int(images.shape[-1])))
    summary = {"dataset": cfg.dataset, "method": cfg.method, "epochs": 0, "steps": 0, "device": str(device)}
    write_json(metrics_path, summary)
    return summary
