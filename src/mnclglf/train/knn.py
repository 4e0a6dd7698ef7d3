"""Online k-NN monitor: is the encoder learning, while pretraining runs?

Every ``pretrain.knn_every`` epochs (and at the last epoch) the backbone encodes the
training and test splits through the deterministic test transform, and each test image
is classified by a k = 200 weighted vote of its nearest training features (cosine
similarity, weights exp(s / 0.1); InstDisc, as solo-learn's and lightly's monitors).

It must leave the run exactly as it would have been without it, so that the tables stay
bit-identical: it encodes with a deep copy of the backbone in eval mode (the training
module's BatchNorm statistics and mode are untouched), under ``no_grad``, with no
augmentation and no random numbers drawn. Its cost is one forward pass over both splits
(about a third of one training epoch's images, without backward or extra views) per
evaluation, on the training device; ``knn_s`` logs it. The number is a monitor, never a
linear-evaluation result: it goes to the DVCLive curve ``knn_top1`` only.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnclglf.data.augment import EvalTransform, Normalizer
from mnclglf.data.store import load_split
from mnclglf.train.linear_eval import encode

K = 200
TEMPERATURE = 0.1


@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
             test_y: torch.Tensor, num_classes: int, k: int = K, t: float = TEMPERATURE,
             chunk: int = 1024) -> float:
    """Top-1 (percent) of the weighted k-NN vote of ``test_f`` against ``train_f``."""
    train_f, test_f = F.normalize(train_f.float(), dim=1), F.normalize(test_f.float(), dim=1)
    k = min(k, train_f.shape[0])
    correct = torch.zeros((), dtype=torch.long, device=test_f.device)
    for i in range(0, test_f.shape[0], chunk):
        sim, idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum()
    return 100.0 * float(correct) / max(1, test_f.shape[0])


class KnnMonitor:
    """The monitor of one run; ``measure`` returns the entries to add to an epoch's log row."""

    def __init__(self, every: int, epochs: int, train: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], transform: EvalTransform,
                 num_classes: int) -> None:
        self.every, self.epochs, self.num_classes = every, epochs, num_classes
        self.train, self.test, self.transform = train, test, transform

    @classmethod
    def for_run(cls, s: Any) -> KnnMonitor | None:
        """The monitor of the pretraining ``Setup`` ``s``; None when ``pretrain.knn_every`` is 0."""
        cfg = s.cfg
        if not cfg.pretrain.knn_every or not cfg.pretrain.epochs:
            return None
        images, labels = load_split(cfg.data_root, cfg.dataset, "test")
        normalizer = Normalizer(*s.mean_std, s.device)
        size = cfg.augment.size or int(s.images.shape[-1])
        transform = EvalTransform(normalizer, size, 0, cfg.augment.interpolation)
        return cls(cfg.pretrain.knn_every, cfg.pretrain.epochs, (s.images, s.labels),
                   (images.to(s.device), labels.to(s.device)), transform, s.num_classes)

    def measure(self, backbone: nn.Module, epoch: int) -> dict[str, float]:
        if epoch % self.every and epoch != self.epochs:
            return {}
        t0 = time.perf_counter()
        probe = copy.deepcopy(backbone).eval()
        train_f = encode(probe, self.train[0], self.transform)
        test_f = encode(probe, self.test[0], self.transform)
        top1 = knn_top1(train_f, self.train[1], test_f, self.test[1], self.num_classes)
        return {"knn_top1": top1, "knn_s": time.perf_counter() - t0}
