"""Linear evaluation: a frozen encoder in eval mode and a trained linear classifier.

The protocol of SimCLR, BYOL and SimSiam as the paper states it: LARS (momentum 0.9,
weight decay 0), cosine lr 0.8 → 0, 90 epochs, batch 256, random-resized-crop + flip
on the training split, top-1/top-5 on the test split. The input sizes follow the
encoder's pretraining size unless ``train_size`` / ``test_resize`` / ``test_crop`` say
otherwise (the released code: RandomResizedCrop(224) for training, Resize(256) +
CenterCrop(224) for testing, both bicubic).

With ``augment: false`` the training images are not augmented: each passes the frozen
encoder once, through the test transform, and the head trains on those cached features.
That is the same computation as encoding every batch afresh (the encoder is frozen and
in eval mode), at a fraction of the cost; the CPU profile uses it (docs/FIDELITY.md).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnclglf.config import DATASETS, LinearEvalConfig, ModelConfig, SpeedConfig, build
from mnclglf.data.augment import (IMAGENET_MEAN, IMAGENET_STD, CropFlipAugment, EvalTransform,
                                  Normalizer)
from mnclglf.data.store import load_meta, load_split
from mnclglf.errors import UserError
from mnclglf.io import write_json
from mnclglf.models import ResNet18
from mnclglf.train import checkpoint as ckpt
from mnclglf.train.env import batches, make_generator, pick_device, seed_everything
from mnclglf.train.lars import LARS
from mnclglf.train.fast import resolve, set_backends, start_line
from mnclglf.train.progress import announce, bar
from mnclglf.train.schedule import cosine_lr, set_lr


ENCODER_KEYS = {"backbone": dict, "model": dict, "dataset": str, "method": str, "epoch": int,
                "normalize": dict, "image_size": int}


def check_encoder_payload(path: Path, payload: dict[str, Any]) -> ModelConfig:
    """The architecture an encoder file names, after checking every key linear-eval reads."""
    for key, tp in ENCODER_KEYS.items():
        if not isinstance(payload.get(key), tp):
            raise UserError(f"{path}: not an encoder file of `mnclglf pretrain` (key {key!r} is "
                            f"missing or not a {tp.__name__})")
    norm = payload["normalize"]
    for key in ("mean", "std"):
        values = norm.get(key)
        if not (isinstance(values, list) and len(values) == 3
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            raise UserError(f"{path}: normalize.{key} = {values!r}: expected 3 finite numbers")
    if not all(v > 0 for v in norm["std"]) or payload["image_size"] < 0:
        raise UserError(f"{path}: normalize.std must be > 0 and image_size >= 0 (0: the dataset's "
                        f"own)")
    if payload["dataset"] not in DATASETS:
        raise UserError(f"{path}: dataset = {payload['dataset']!r}: expected one of "
                        f"{', '.join(DATASETS)}")
    return build(ModelConfig, payload["model"], f"{path}: model")


EXTERNAL_PREFIXES = ("", "module.", "backbone.", "module.backbone.", "encoder.", "model.backbone.")


def _torchvision_key(key: str) -> str | None:
    """torchvision's ResNet-18 name of a weight → this package's; None for the classifier."""
    if key.startswith("fc."):
        return None
    for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"layer([1-4])\.(\d)\.(.+)$", key)
    if m:
        return f"layers.{int(m[1]) - 1}.{m[2]}.{m[3].replace('downsample.', 'shortcut.')}"
    return key  # left as it is: the strict load names it


def import_resnet18(path: Path, payload: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """An encoder payload from a plain ResNet-18 ``state_dict`` with torchvision's keys, bare or
    under a prefix (``backbone.``: solo-learn's ``state_dict``, lightly's backbone), else None.

    Stem and width follow from ``conv1``; the inputs are normalised with ImageNet's statistics
    (torchvision's convention) at the dataset's own image size.
    """
    sd = payload.get("state_dict", payload)
    if not (isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())):
        return None
    prefix = next((p for p in EXTERNAL_PREFIXES if f"{p}conv1.weight" in sd), None)
    if prefix is None:
        return None
    conv1 = sd[f"{prefix}conv1.weight"]
    if conv1.ndim != 4 or conv1.shape[-1] not in (3, 7):
        raise UserError(f"{path}: conv1.weight has shape {tuple(conv1.shape)}; expected a 3×3 "
                        f"(CIFAR) or 7×7 (ImageNet) ResNet-18 stem")
    backbone = {}
    for key, value in sd.items():
        name = _torchvision_key(key[len(prefix):]) if key.startswith(prefix) else None
        if name is not None:
            backbone[name] = value
    stem = "imagenet" if conv1.shape[-1] == 7 else "cifar"
    return {"backbone": backbone, "dataset": dataset, "method": "external",
            "run": f"external:{path.name}", "variant": None, "epoch": 0, "image_size": 0,
            "model": {"stem": stem, "width": conv1.shape[0] / 64, "zero_init_residual": False},
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}


def load_encoder(path: Path, device: torch.device,
                 dataset: str | None = None) -> tuple[ResNet18, dict[str, Any]]:
    """The frozen encoder stored at ``path``, read without running code; a bad file is one line.

    With ``dataset``, a plain torchvision-keyed ResNet-18 state_dict is accepted too
    (:func:`import_resnet18`).
    """
    if not path.is_file():
        raise UserError(f"{path}: encoder file not found (run `mnclglf pretrain` first)")
    payload = ckpt.load(path, "encoder file")
    if dataset is not None and "backbone" not in payload:
        payload = import_resnet18(path, payload, dataset) or payload
    m = check_encoder_payload(path, payload)
    encoder = ResNet18(m.stem, m.width, m.zero_init_residual)
    try:
        encoder.load_state_dict(payload["backbone"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: its backbone does not fit a ResNet-18 ({reason})") from None
    return encoder.to(device).eval().requires_grad_(False), payload


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, torch.Tensor]:
    """Number of rows whose label is among the top-k logits, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {k: hit[:, :k].any(1).sum() for k in ks}


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, transform: EvalTransform, batch_size: int = 1024) -> torch.Tensor:
    """Features of ``images`` through the deterministic test transform, in chunks."""
    return torch.cat([encoder(transform(images[i:i + batch_size])) for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def evaluate(encoder: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             transform: EvalTransform, batch_size: int) -> dict[str, float]:
    logits = head(encode(encoder, images, transform, batch_size))
    hits = topk_accuracy(logits, labels)
    n = images.shape[0]
    return {"top1": 100.0 * float(hits[1]) / n, "top5": 100.0 * float(hits[5]) / n}


def backend_settings(speed: SpeedConfig, device: torch.device) -> dict[str, str]:
    """The ``speed`` settings the probe honours: TF32 unless strict fp32, and cudnn.benchmark.

    The frozen encoder's features stay fp32 (no bf16 autocast): the probe is a small share
    of the paper run, and fp32 features keep its accuracy free of a precision choice.
    """
    want = resolve(speed, device)
    return set_backends("fp32" if want["precision"] == "fp32" else "tf32", want["cudnn_benchmark"], device)


@dataclass
class Probe:
    """What a linear-eval epoch trains: the frozen encoder, the head and its optimiser, the split
    on the device, its cached features (None: every batch augmented and encoded afresh)."""

    encoder: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    augment: CropFlipAugment
    images: torch.Tensor
    labels: torch.Tensor
    cached: torch.Tensor | None
    gens: dict[str, torch.Generator]


def train_epoch(p: Probe, batch_size: int, lrs: list[float],
                advance: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of the head, step ``i`` at ``lrs[i]``: the summed loss and hits, on the device.

    The epoch's order is copied to the device once; nothing else crosses between host and device
    (tests/test_no_host_sync.py), the caller reads the two sums once.
    """
    device = p.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    order = batches(p.images.shape[0], batch_size, p.gens["order"], drop_last=False, device=device)
    for idx, lr in zip(order, lrs, strict=True):
        set_lr(p.optimizer, lr)
        if p.cached is None:
            with torch.no_grad():
                feats = p.encoder(p.augment(p.images[idx], p.gens["augment"]))
        else:
            feats = p.cached[idx]
        logits = p.head(feats)
        labels = p.labels[idx]
        loss = F.cross_entropy(logits, labels)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        loss_sum += loss.detach() * idx.numel()
        correct += (logits.argmax(1) == labels).sum()
        advance()
    return loss_sum, correct


def linear_eval(encoder_path: Path, cfg: LinearEvalConfig, data_root: str, seed: int, out_dir: Path,
                metrics_path: Path, progress: bool = True, speed: SpeedConfig | None = None,
                dataset: str | None = None) -> dict[str, Any]:
    """Probe the encoder at ``encoder_path``; ``dataset`` lets a plain ResNet-18 state_dict in."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(seed)
    encoder, payload = load_encoder(encoder_path, torch.device("cpu"), dataset)
    dataset = payload["dataset"]
    device = pick_device(cfg.device, dataset, "linear_eval.device")
    encoder = encoder.to(device)
    announce(start_line(f"linear-eval {payload.get('run', payload['method'])}@{dataset}", device,
                        backend_settings(speed or SpeedConfig(), device)))
    meta = load_meta(data_root, dataset)
    num_classes = len(meta["classes"])
    train_x, train_y = (t.to(device) for t in load_split(data_root, dataset, "train"))
    test_x, test_y = (t.to(device) for t in load_split(data_root, dataset, "test"))
    normalizer = Normalizer(tuple(payload["normalize"]["mean"]), tuple(payload["normalize"]["std"]), device)
    size = cfg.train_size or int(payload["image_size"]) or int(train_x.shape[-1])
    augment = CropFlipAugment(cfg.crop_scale, cfg.flip_p, normalizer, size, mode=cfg.interpolation)
    transform = EvalTransform(normalizer, cfg.test_crop or size, cfg.test_resize, cfg.interpolation)
    head = nn.Linear(encoder.out_dim, num_classes).to(device)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    optimizer = LARS(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                     trust_coefficient=cfg.trust_coefficient)
    gens = {"order": make_generator(torch.device("cpu"), seed), "augment": make_generator(device, seed + 1)}
    n = train_x.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = len(batches(n, bs, torch.Generator().manual_seed(0), drop_last=False))
    total = steps_per_epoch * cfg.epochs

    from mnclglf.train.logger import EpochLogger

    logger = EpochLogger(out_dir / "live", [])
    start = time.perf_counter()
    cached = None if cfg.augment else encode(encoder, train_x, transform)
    p = Probe(encoder, head, optimizer, augment, train_x, train_y, cached, gens)
    with bar(progress) as pbar:
        task = pbar.add_task(f"linear-eval {payload['method']}@{dataset}", total=total, status="")
        for epoch in range(1, cfg.epochs + 1):
            first = (epoch - 1) * steps_per_epoch
            lrs = [cosine_lr(first + i, total, cfg.lr) for i in range(steps_per_epoch)]
            loss_sum, correct = train_epoch(p, bs, lrs, lambda: pbar.advance(task))
            row = {"epoch": epoch, "train_loss": float(loss_sum) / n, "train_top1": 100.0 * float(correct) / n}
            logger.log(row)
            pbar.update(task, status=f"loss {row['train_loss']:.3f}")
    logger.close()
    result = evaluate(encoder, head, test_x, test_y, transform, 1024)
    metrics = {"dataset": dataset, "method": payload["method"], "variant": payload.get("variant"),
               "run": payload.get("run", payload["method"]), "pretrain_epoch": payload["epoch"], **result,
               "epochs": cfg.epochs, "augment": cfg.augment, "train_top1_last": row["train_top1"] if cfg.epochs else None,
               "wall_s": time.perf_counter() - start, "device": str(device)}
    write_json(metrics_path, metrics)
    return metrics
