"""Each function of mnclglf.ops against a small hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mnclglf import ops


def test_infonce_hand_computed() -> None:
    # p rows are e1, e2; h = two chunks: [e1, e2] and [e2, e1]. τ = 1.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 5.0], [7.0, 0.0]])  # normalised inside
    good = -math.log(math.e / (math.e + 1))  # positive logit 1, negative 0
    bad = -math.log(1 / (math.e + 1))  # positive logit 0, negative 1
    expected = (good + good) / 2 / 2 + (bad + bad) / 2 / 2
    assert ops.infonce(h, p, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_temperature_scales_logits() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert ops.infonce(p.clone(), p, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_normalises_both_inputs() -> None:
    """Predictions and targets of any length give the loss of their unit-length directions."""
    g = torch.Generator().manual_seed(0)
    h, p = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    scale_h = torch.rand(6, 1, generator=g) * 5 + 0.2
    scale_p = torch.rand(3, 1, generator=g) * 5 + 0.2
    unit = ops.infonce(F.normalize(h, dim=1), F.normalize(p, dim=1), 0.5)
    assert ops.infonce(h * scale_h, p * scale_p, 0.5).item() == pytest.approx(unit.item(), rel=1e-6)
    assert ops.infonce(h, p * scale_p, 0.5).item() == pytest.approx(unit.item(), rel=1e-6)
    unit_p = F.normalize(p, dim=1)
    logits = torch.stack([F.normalize(c, dim=1) @ unit_p.T / 0.5 for c in h.view(2, 3, 4)])
    expected = torch.stack([F.cross_entropy(lg, torch.arange(3)) for lg in logits]).mean()
    got = ops.infonce(h * scale_h, p * scale_p, 0.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_infonce_rejects_non_multiple() -> None:
    with pytest.raises(ValueError):
        ops.infonce(torch.randn(5, 3), torch.randn(2, 3), 1.0)


def test_divide_patch_major_row_major() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = ops.divide(x, 2)
    assert y.shape == (8, 1, 2, 2)
    # image 0 top-left, image 1 top-left, image 0 top-right, ...
    assert y[0, 0].tolist() == [[0, 1], [4, 5]]
    assert y[1, 0].tolist() == [[16, 17], [20, 21]]
    assert y[2, 0].tolist() == [[2, 3], [6, 7]]
    assert y[4, 0].tolist() == [[8, 9], [12, 13]]
    assert y[6, 0].tolist() == [[10, 11], [14, 15]]


def test_divide_not_divisible() -> None:
    with pytest.raises(ValueError):
        ops.divide(torch.zeros(1, 3, 5, 4), 2)


def test_combine_means_in_itertools_order() -> None:
    v = torch.tensor([[0.0], [10.0], [2.0], [20.0], [4.0], [40.0], [8.0], [80.0]])  # 4 patches × N=2
    out = ops.combine(v, 2)
    # (0,1), (0,2), (0,3), (1,2), (1,3), (2,3)
    assert out.view(-1).tolist() == [1, 15, 2, 25, 4, 45, 3, 30, 5, 50, 6, 60]
    assert ops.combine(v, 4).view(-1).tolist() == [3.5, 37.5]
    assert torch.equal(ops.combine(v, 1), v)


@pytest.mark.parametrize("k", [0, 5])
def test_combine_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError):
        ops.combine(torch.zeros(8, 3), k)


def test_nearest_neighbour_cosine_returns_stored_row() -> None:
    queue = torch.tensor([[10.0, 0.0], [0.0, 0.1], [-3.0, -3.0]])
    z = torch.tensor([[0.0, 5.0], [1.0, 0.1], [-1.0, -0.9]])
    nn = ops.nearest_neighbour(queue, z)
    assert torch.equal(nn, queue[[1, 0, 2]])


def test_ema_formula() -> None:
    t = [torch.tensor([1.0, 2.0])]
    o = [torch.tensor([3.0, -2.0])]
    ops.ema_(t, o, 0.9)
    assert t[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2])


def test_embedding_std_collapse_and_spread() -> None:
    assert ops.embedding_std(torch.ones(16, 8)).item() == pytest.approx(0.0, abs=1e-7)
    assert ops.embedding_std(torch.eye(8)).item() > 0.3


def test_mnclglf_loss_combines_terms() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 3, 4
    c1, c3 = torch.randn(6 * n, d, generator=g), torch.randn(6 * n, d, generator=g)
    p1, p2, p3, z1, z2 = (torch.randn(n, d, generator=g) for _ in range(5))
    total, ls, lm = ops.mnclglf_loss(c1, c3, p1, p2, p3, z1, z2, 1.0, 6.0)
    assert ls.item() == pytest.approx(((ops.infonce(c1, p3, 1.0) + ops.infonce(c3, p1, 1.0)) / 2).item())
    assert lm.item() == pytest.approx(((ops.infonce(z1, p2, 1.0) + ops.infonce(z2, p1, 1.0)) / 2).item())
    assert total.item() == pytest.approx(ls.item() + 6.0 * lm.item(), rel=1e-6)


def test_combine_matrix_first_made_in_inference_mode_still_trains() -> None:
    """The cached averaging matrix is an ordinary tensor even when inference mode made it first."""
    for cache in ops.DEVICE_CACHES:
        cache.cache_clear()
    v = torch.randn(8, 3)
    with torch.inference_mode():
        ops.combine(v, 2)
    w = v.clone().requires_grad_(True)
    ops.combine(w, 2).sum().backward()
    # each patch is in 3 of the 6 pairs, with weight 1/2
    assert w.grad is not None and torch.equal(w.grad, torch.full_like(v, 1.5))
