"""Pure tensor functions: the losses, divide, combine and the nearest-neighbour look-up.

Nothing here knows a network or a training loop; reviewers' notebooks and external
checks call these by name, so their names and contracts are fixed.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F


def _chunk_logits(h: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """(s, N, N) cosine logits ``chunk @ p.T / tau`` of the s chunks of N rows of ``h``."""
    n = p.shape[0]
    if h.shape[0] % n:
        raise ValueError(f"{h.shape[0]} rows are not a multiple of the other side's {n}")
    h = F.normalize(h, dim=1)
    p = F.normalize(p, dim=1)
    return (h.view(h.shape[0] // n, n, -1) @ p.T) / tau


def _diagonal_ce(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (s, N, N) logits against labels 0..N-1 (the diagonal)."""
    s, n, _ = logits.shape
    return F.cross_entropy(logits.reshape(s * n, n), torch.arange(n, device=logits.device).repeat(s))


def infonce(h: torch.Tensor, p: torch.Tensor, tau: float) -> torch.Tensor:
    """Algorithm 1's ``L(h, p)``.

    ``h`` is (s·N, D), ``p`` is (N, D); both are L2-normalised here. For each of the ``s``
    consecutive chunks of N rows of ``h``, the cross-entropy of ``chunk @ p.T / tau``
    against labels 0..N-1; the mean over the chunks.
    """
    return _diagonal_ce(_chunk_logits(h, p, tau))


def divide(x: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """(N, C, H, W) → (grid²·N, C, H/grid, W/grid), patch-major, patches in row-major order.

    Rows ``[i·N:(i+1)·N]`` hold patch ``i`` of every image (top-left, top-right,
    bottom-left, bottom-right for grid 2).
    """
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}×{w} is not divisible by grid {grid}")
    ph, pw = h // grid, w // grid
    patches = x.reshape(n, c, grid, ph, grid, pw).permute(2, 4, 0, 1, 3, 5)
    return patches.reshape(grid * grid * n, c, ph, pw)


def combinations(parts: int, k: int) -> list[tuple[int, ...]]:
    """The k-subsets of ``range(parts)`` in ``itertools.combinations`` order."""
    if not 1 <= k <= parts:
        raise ValueError(f"k must be in 1..{parts}, got {k}")
    return list(itertools.combinations(range(parts), k))


def combine(v: torch.Tensor, k: int, parts: int = 4) -> torch.Tensor:
    """(parts·N, D) patch-major → (C(parts, k)·N, D), combination-major.

    Block ``j`` is the mean of the k patch blocks of the j-th
    ``itertools.combinations(range(parts), k)``.
    """
    if v.shape[0] % parts:
        raise ValueError(f"v has {v.shape[0]} rows, not a multiple of parts={parts}")
    n = v.shape[0] // parts
    weights = _combine_weights(parts, k, v.device, v.dtype)
    return (weights @ v.reshape(parts, -1)).reshape(weights.shape[0] * n, *v.shape[1:])


def _combine_weights(parts: int, k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (C(parts, k), parts) averaging matrix of :func:`combine`, made once per device and dtype.

    A matmul is fast and, unlike a gather whose backward accumulates with index_add, has a
    deterministic gradient on every device. Building it writes host indices into a device
    tensor, a host-to-device copy that would sync every step: eager code takes it from a
    cache; ``torch.compile`` traces the build into its graph as a constant (Dynamo would
    trace through the cache and warn).
    """
    if torch.compiler.is_compiling():
        return _averaging_matrix(parts, k, device, dtype)
    return _cached_averaging_matrix(parts, k, device, dtype)


def _averaging_matrix(parts: int, k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    combos = combinations(parts, k)
    weights = torch.zeros(len(combos), parts, dtype=dtype, device=device)
    for j, combo in enumerate(combos):
        weights[j, list(combo)] = 1.0 / k
    return weights


@functools.cache
def _cached_averaging_matrix(parts: int, k: int, device: torch.device,
                             dtype: torch.dtype) -> torch.Tensor:
    """Made outside inference mode, so that a first call under ``torch.inference_mode`` (the
    ``inference_mode_targets`` fast path) caches a tensor that autograd may save."""
    with torch.inference_mode(False):
        return _averaging_matrix(parts, k, device, dtype)


DEVICE_CACHES = (_cached_averaging_matrix,)  # what tests that change devices clear


def n_combinations(parts: int, k: int) -> int:
    return math.comb(parts, k)


def nearest_neighbour(queue: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """For each row of ``z``, the row of ``queue`` with the highest cosine similarity, as stored."""
    sim = F.normalize(z, dim=1) @ F.normalize(queue, dim=1).T
    return queue[sim.argmax(dim=1)]


def ntxent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N normalised rows of [a; b].

    Each row's positive is its partner in the other half; the other 2N−2 rows are
    negatives (self-similarity removed). Mean over all 2N rows, i.e. both directions.
    """
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T) / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.arange(2 * n, device=z.device).roll(n)  # [n..2n−1, 0..n−1], on the device
    return F.cross_entropy(sim, targets)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −cos(p, stopgrad(z)), batch mean."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, 2 − 2·cos(p, stopgrad(z)), batch mean."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo's InfoNCE: positive logit q·k, negatives q·queue, cross-entropy with label 0.

    All rows are L2-normalised here; ``k`` and ``queue`` carry no gradient.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def ema_(target: list[torch.Tensor], online: list[torch.Tensor], m: float) -> None:
    """In place, θ_target ← m·θ_target + (1 − m)·θ_online (Eqs. 2–3), one fused call."""
    torch._foreach_lerp_(target, online, 1.0 - m)


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """SimSiam's collapse monitor: the mean per-dimension std of L2-normalised rows.

    About 1/sqrt(D) for well-spread embeddings, 0 for a collapsed output.
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


def mnclglf_loss(c1: torch.Tensor, c3: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor,
                 z1: torch.Tensor, z2: torch.Tensor, tau: float, lam: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1's loss: ``(loss_total, loss_s, loss_m)``.

    loss_s = (L(c1, p3) + L(c3, p1)) / 2 pairs the combined patch embeddings of one
    view with the prediction of another; loss_m = (L(z1, p2) + L(z2, p1)) / 2 pairs the
    momentum network's nearest neighbours with the predictions; total = loss_s + λ·loss_m.
    """
    loss_s = (infonce(c1, p3, tau) + infonce(c3, p1, tau)) / 2
    loss_m = (infonce(z1, p2, tau) + infonce(z2, p1, tau)) / 2
    return loss_s + lam * loss_m, loss_s, loss_m


def infonce_pk(p: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """The released code's ``loss1`` with the predictions in the rows (Algorithm 1's ``L`` transposed).

    ``p`` is (N, D), ``k`` is (s·N, D); both are L2-normalised here. For each of the ``s``
    consecutive chunks of N rows of ``k``, the cross-entropy of ``p @ chunk.T / tau``
    against labels 0..N-1 (a softmax over the chunk's rows); the mean over the chunks.
    """
    return _diagonal_ce(_chunk_logits(k, p, tau).transpose(1, 2))


def released_loss(p1: torch.Tensor, k1: torch.Tensor, p2: torch.Tensor, k2: torch.Tensor, p3: torch.Tensor,
                  j3: torch.Tensor, j1: torch.Tensor, tau: float = 1.0, a: float = 6.0, loss_s_grad: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The released code's ``InfoNCE.forward``: ``(loss_total, loss_s, loss_m)``.

    Arguments as the released code names them: ``p1, p2, p3`` the predictions of the three
    views; ``k1, k2`` the (C(4,2)·N, D) projected combined-patch embeddings of x1 and x2
    (the stop-gradient branch, always detached here); ``j3, j1`` the nearest neighbours of
    the momentum embeddings of x3 and x1.

    * loss_s (``loss1``): every chunk of k1 against p2 and every chunk of k2 against p1,
      ``CE(normalize(p)·normalize(k)ᵀ / tau, arange(N))``, averaged over all the chunks
      (12 for k = 2). The released code gathers p1, p2 through a detaching all-gather, so
      loss_s carries no gradient; ``loss_s_grad=True`` lets it train.
    * loss_m (``loss2``): ``0.5·NTXent(j3, p1) + 0.5·NTXent(j1, p3)`` (lightly's NT-Xent; the
      released code hard-codes its temperature to 1, which is also its config's T).
    * loss_total = loss_s + a·loss_m, ``a = 6`` hard-coded in the released code.
    """
    ps1, ps2 = (p1, p2) if loss_s_grad else (p1.detach(), p2.detach())
    n1, n2 = k1.shape[0] // p2.shape[0], k2.shape[0] // p1.shape[0]
    loss_s = (infonce_pk(ps2, k1.detach(), tau) * n1 + infonce_pk(ps1, k2.detach(), tau) * n2) / (n1 + n2)
    loss_m = 0.5 * ntxent(j3, p1, tau) + 0.5 * ntxent(j1, p3, tau)
    return loss_s + a * loss_m, loss_s, loss_m
