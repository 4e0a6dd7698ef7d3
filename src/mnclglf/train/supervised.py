"""The supervised baseline of Table 3: the pretraining loop with labels, then test accuracy.

``pretrain.pretrain`` trains backbone + linear head of ``methods.supervised`` with
cross-entropy under the shared configuration (same optimiser, schedule, epochs and
batch as every SSL method; crop + flip views). It saves the backbone as
``encoder.pt`` and, at the last epoch, a checkpoint holding the whole method; the
head is read back from that checkpoint (fingerprint-checked, so it is this
configuration's final state), and backbone + head are evaluated in eval mode on the
test split with the deterministic ``EvalTransform``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from torch import nn

from mnclglf.config import RunConfig, to_dict
from mnclglf.data.augment import EvalTransform, Normalizer
from mnclglf.data.store import load_meta, load_split
from mnclglf.errors import UserError
from mnclglf.io import write_json
from mnclglf.methods import build_method
from mnclglf.methods.supervised import Supervised
from mnclglf.train import checkpoint as ckpt
from mnclglf.train.env import pick_device
from mnclglf.train.linear_eval import evaluate, load_encoder
from mnclglf.train.pretrain import CHECKPOINT_FILE, ENCODER_FILE, pretrain

PRETRAIN_SUMMARY = "pretrain_summary.json"  # the loop's own summary, inside out_dir
EVAL_BATCH = 1024


def trained_head(cfg: RunConfig, ckpt_dir: Path, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The linear head of the final checkpoint of ``cfg``'s run, and the last epoch's logged row."""
    state, _ = ckpt.load_if_matching(ckpt_dir / CHECKPOINT_FILE, ckpt.fingerprint(to_dict(cfg)))
    if state is None or state["epoch"] != cfg.pretrain.epochs:
        raise UserError(f"{ckpt_dir / CHECKPOINT_FILE}: no final checkpoint of this supervised run")
    method = build_method(cfg, num_classes)
    assert isinstance(method, Supervised)
    method.load_state_dict(state["method"])
    return method.head.eval(), (state["history"][-1] if state["history"] else {})


def train_supervised(cfg: RunConfig, out_dir: Path, ckpt_dir: Path, metrics_path: Path,
                     progress: bool = True) -> dict[str, Any]:
    """Train the supervised baseline on ``cfg.dataset``; write top-1/top-5 (percent) to ``metrics_path``."""
    cfg = dataclasses.replace(cfg, method="supervised")
    if cfg.pretrain.epochs < 1:
        raise UserError("pretrain.epochs = 0: the supervised baseline needs at least one epoch")
    start = time.perf_counter()
    summary = pretrain(cfg, out_dir, ckpt_dir, out_dir / PRETRAIN_SUMMARY, progress)
    device = pick_device(cfg.pretrain.device, cfg.dataset)
    encoder, payload = load_encoder(out_dir / ENCODER_FILE, device)
    num_classes = len(load_meta(cfg.data_root, cfg.dataset)["classes"])
    head, last = trained_head(cfg, ckpt_dir, num_classes)
    test_x, test_y = (t.to(device) for t in load_split(cfg.data_root, cfg.dataset, "test"))
    normalizer = Normalizer(tuple(payload["normalize"]["mean"]), tuple(payload["normalize"]["std"]), device)
    result = evaluate(encoder, head.to(device), test_x, test_y, EvalTransform(normalizer, int(payload["image_size"])),
                      EVAL_BATCH)
    metrics = {"dataset": cfg.dataset, "method": "supervised", **result, "epochs": cfg.pretrain.epochs,
               "steps": summary["steps"], "final_loss": summary["final_loss"],
               "train_top1_last": last.get("train_top1"), "wall_s": time.perf_counter() - start,
               "device": str(device)}
    write_json(metrics_path, metrics)
    return metrics
