"""Same seed, same weights: Fast-MoCo back-propagates through `combine`, whose gather-based
form accumulated its gradient non-deterministically on two CPU threads (fixed: a matmul)."""

from __future__ import annotations

import torch

from mnclglf import config
from mnclglf.data.digits import digits_arrays
from mnclglf.train import pretrain


def trained_parameters(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    raw = {"model": {"width": 0.125, "proj_hidden": 256, "proj_out": 256, "pred_hidden": 64},
           "pretrain": {"batch_size": 128}}
    s = pretrain.setup(config.run_config(raw, "digits", "fastmoco"), x, y, 10)
    for i in range(4):
        pretrain.train_step(s, torch.arange(i * 128, (i + 1) * 128), i, 100)
    return torch.cat([p.detach().flatten() for p in s.method.parameters()])


def test_fastmoco_training_is_bit_reproducible_on_two_threads() -> None:
    torch.set_num_threads(2)
    images, labels = digits_arrays(16)
    x, y = torch.from_numpy(images[:512]), torch.from_numpy(labels[:512])
    assert torch.equal(trained_parameters(x, y), trained_parameters(x, y))
