"""Linear evaluation: the cached-feature probe is the same computation as encoding every batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnclglf import config
from mnclglf.data import load_split
from mnclglf.data.augment import EvalTransform, Normalizer
from mnclglf.train.env import batches, make_generator, seed_everything
from mnclglf.train.lars import LARS
from mnclglf.train.linear_eval import linear_eval, load_encoder, topk_accuracy
from mnclglf.train.pretrain import save_random_init
from mnclglf.train.schedule import cosine_lr, set_lr


def reference_probe(encoder_path: Path, cfg: config.LinearEvalConfig, root: Path, seed: int) -> dict[str, float]:
    """The probe written plainly: every training batch goes through the frozen encoder afresh."""
    seed_everything(seed)
    encoder, payload = load_encoder(encoder_path, torch.device("cpu"))
    tx, ty = load_split(root, "digits", "train")
    vx, vy = load_split(root, "digits", "test")
    norm = Normalizer(tuple(payload["normalize"]["mean"]), tuple(payload["normalize"]["std"]), torch.device("cpu"))
    transform = EvalTransform(norm, int(payload["image_size"]))
    head = nn.Linear(encoder.out_dim, 10)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    opt = LARS(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
               trust_coefficient=cfg.trust_coefficient)
    order = make_generator(torch.device("cpu"), seed)
    n = tx.shape[0]
    per_epoch = len(batches(n, cfg.batch_size, torch.Generator().manual_seed(0), drop_last=False))
    for epoch in range(cfg.epochs):
        for i, idx in enumerate(batches(n, cfg.batch_size, order, drop_last=False)):
            set_lr(opt, cosine_lr(epoch * per_epoch + i, per_epoch * cfg.epochs, cfg.lr))
            with torch.no_grad():
                feats = encoder(transform(tx[idx]))
            loss = F.cross_entropy(head(feats), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        hits = topk_accuracy(head(encoder(transform(vx))), vy)
    return {"top1": 100.0 * float(hits[1]) / vx.shape[0], "top5": 100.0 * float(hits[5]) / vx.shape[0]}


def test_cached_feature_probe_equals_encoding_every_batch(digits_root: Path, tiny_raw: dict, tmp_path: Path) -> None:
    raw = {**tiny_raw, "linear_eval": {"epochs": 3, "batch_size": 64, "augment": False, "lr": 0.5,
                                       "trust_coefficient": 0.05}}
    save_random_init(config.run_config(raw, "digits", "random-init"), tmp_path / "enc", tmp_path / "init.json")
    cfg = config.linear_eval_config(raw, "digits")
    got = linear_eval(tmp_path / "enc" / "encoder.pt", cfg, str(digits_root), 3, tmp_path / "lin", tmp_path / "l.json",
                      progress=False)
    want = reference_probe(tmp_path / "enc" / "encoder.pt", cfg, digits_root, 3)
    assert got["augment"] is False
    assert (got["top1"], got["top5"]) == (want["top1"], want["top5"])
    assert got["top1"] > 30.0  # three epochs on random features already beat chance (10 %) by far



@pytest.mark.parametrize(("stem", "prefix"), [("imagenet", ""), ("cifar", "backbone.")])
def test_a_torchvision_resnet18_state_dict_is_imported(tmp_path: Path, stem: str,
                                                       prefix: str) -> None:
    """torchvision's own ResNet-18 (bare), and solo-learn's CIFAR form of it (3×3 stem, no
    max-pool; ``backbone.`` under ``state_dict``, classifier included) load as the same network."""
    torchvision = pytest.importorskip("torchvision")  # not a dependency of the package
    from mnclglf.train.linear_eval import load_encoder

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    if stem == "cifar":
        ref.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        ref.maxpool = nn.Identity()
    with torch.no_grad():  # non-trivial running statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    sd = {prefix + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "external.pth"
    torch.save({"state_dict": sd} if prefix else sd, path)
    encoder, payload = load_encoder(path, torch.device("cpu"), dataset="cifar10")
    assert payload["model"] == {"stem": stem, "width": 1.0, "zero_init_residual": False}
    ref.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(encoder(x), ref.eval()(x), rtol=1e-5, atol=1e-6)
