"""Batched augmentation: per-sample randomness, torchvision-equivalent pieces, determinism."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

from mnclglf.config import AugmentConfig
from mnclglf.data import augment as A


def test_full_box_crop_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(2, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    torch.testing.assert_close(A.resized_crop(x, boxes, 8), x)
    torch.testing.assert_close(A.resized_crop(x, boxes, 8, torch.tensor([True, False]))[0], x[0].flip(-1))


def test_integer_crop_matches_slicing() -> None:
    x = torch.rand(1, 3, 8, 8)
    boxes = torch.tensor([[2.0, 1.0, 4.0, 4.0]])  # top, left, h, w
    torch.testing.assert_close(A.resized_crop(x, boxes, 4), x[:, :, 2:6, 1:5])


def test_crop_boxes_within_image_and_scale() -> None:
    g = torch.Generator().manual_seed(0)
    b = A.crop_boxes(4096, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), g, torch.device("cpu"))
    top, left, h, w = b.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.15 and area.max() <= 1.0
    assert area.std() > 0.1  # per-sample parameters, not one box for the batch


def test_color_ops_match_torchvision() -> None:
    x = torch.rand(4, 3, 6, 6)
    f = torch.tensor([0.6, 1.0, 1.3, 1.7])
    ours_b = A._blend(x, torch.zeros_like(x), f)
    ref_b = torch.stack([TF.adjust_brightness(x[i], float(f[i])) for i in range(4)])
    torch.testing.assert_close(ours_b, ref_b)
    ours_s = A._blend(x, A._gray(x).expand_as(x), f)
    ref_s = torch.stack([TF.adjust_saturation(x[i], float(f[i])) for i in range(4)])
    torch.testing.assert_close(ours_s, ref_s, atol=1e-5, rtol=1e-5)
    mean = A._gray(x).mean(dim=(1, 2, 3), keepdim=True)
    ours_c = A._blend(x, mean.expand_as(x), f)
    ref_c = torch.stack([TF.adjust_contrast(x[i], float(f[i])) for i in range(4)])
    torch.testing.assert_close(ours_c, ref_c, atol=1e-5, rtol=1e-5)


def test_hue_roundtrip_and_shift_matches_torchvision() -> None:
    x = torch.rand(3, 3, 5, 5)
    torch.testing.assert_close(A._hsv_to_rgb(*A._rgb_to_hsv(x)), x, atol=1e-5, rtol=1e-5)
    shifted = A._hue(x, torch.full((3,), 0.2))
    ref = torch.stack([TF.adjust_hue(x[i], 0.2) for i in range(3)])
    torch.testing.assert_close(shifted, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("subset", [True, False])
def test_color_jitter_is_torchvision_in_the_drawn_order(subset: bool) -> None:
    """Each jittered sample gets torchvision's four adjustments, in its own drawn order, on either path."""
    n, strength = 24, (0.4, 0.4, 0.4, 0.1)
    x = torch.rand(n, 3, 6, 6)
    apply = torch.rand(n, generator=torch.Generator().manual_seed(1)) < 0.8
    out = A.color_jitter(x, strength, apply, torch.Generator().manual_seed(2), subset=subset)
    g = torch.Generator().manual_seed(2)  # the same draws, in the same order
    factors = [torch.rand(n, generator=g) * 0.8 + 0.6 for _ in range(3)] + [torch.rand(n, generator=g) * 0.2 - 0.1]
    order = torch.rand(n, 4, generator=g).argsort(1)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        ref = x[i]
        for k in order[i].tolist() if apply[i] else ():
            ref = adjust[k](ref, float(factors[k][i]))
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(out[~apply], x[~apply])


def test_subset_path_equals_whole_batch_path() -> None:
    """Index-selecting the samples each op applies to (the CPU path) gives the views of the GPU's
    sync-free whole-batch path, bit for bit, and leaves the generator in the same state."""
    images = torch.randint(0, 256, (37, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for cfg in (AugmentConfig(), AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.0), gray_p=0.5, blur_p=1.0),
                AugmentConfig(jitter_p=1.0, gray_p=0.0, blur_p=0.0)):
        views, states = [], []
        for subset in (True, False):
            aug = A.SSLAugment(cfg, A.make_normalizer("dataset", images, torch.device("cpu")), 16)
            aug.subset = subset
            g = torch.Generator().manual_seed(5)
            views.append(torch.cat([aug(images, g), aug(images[:1], g)]))
            states.append(g.get_state())
        assert torch.equal(views[0], views[1])
        assert torch.equal(states[0], states[1])


def test_blur_matches_torchvision_per_sample_sigma() -> None:
    x = torch.rand(2, 3, 9, 9)
    sigma = torch.tensor([0.5, 1.5])
    ours = A.gaussian_blur(x, sigma, 5)
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(2)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_views_are_seeded_and_differ_per_sample() -> None:
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    aug = A.SSLAugment(AugmentConfig(), A.make_normalizer("dataset", images, torch.device("cpu")), 16)
    a = aug(images, torch.Generator().manual_seed(3))
    b = aug(images, torch.Generator().manual_seed(3))
    c = aug(images, torch.Generator().manual_seed(4))
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    same = images[:1].repeat(16, 1, 1, 1)
    v = aug(same, torch.Generator().manual_seed(0))
    assert v.flatten(1).std(0).mean() > 0.05  # the same image gets different views


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_probabilities_are_respected(p: float) -> None:
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=p, blur_p=0.0)
    aug = A.SSLAugment(cfg, A.make_normalizer("none", images, torch.device("cpu")), 8)
    out = aug(images, torch.Generator().manual_seed(0))
    is_gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert bool(is_gray.all()) == (p == 1.0)
    if p == 0.0:
        torch.testing.assert_close(out, images.float() / 255)


# -- the whole-batch (GPU) jitter path against the implementation it replaced --------------------
# A frozen copy of the earlier whole-batch schedule (every operation on the whole batch at every one
# of the four positions, the result selected per sample), over the package's own per-operation
# helpers, which the CPU path shares: the reference whose floats the fused path must equal bit for bit.


def _old_whole_batch_jitter(x: torch.Tensor, strength: tuple[float, float, float, float],
                            apply: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, device = x.shape[0], x.device
    b, c, s, hue = strength
    fb = torch.rand(n, generator=gen, device=device) * (1 + b - max(0.0, 1 - b)) + max(0.0, 1 - b)
    fc = torch.rand(n, generator=gen, device=device) * (1 + c - max(0.0, 1 - c)) + max(0.0, 1 - c)
    fs = torch.rand(n, generator=gen, device=device) * (1 + s - max(0.0, 1 - s)) + max(0.0, 1 - s)
    fh = torch.rand(n, generator=gen, device=device) * (2 * hue) - hue
    order = torch.rand(n, 4, generator=gen, device=device).argsort(1)
    ops = [(A._brightness, fb), (A._contrast, fc), (A._saturation, fs), (A._hue, fh) if hue > 0 else None]
    for pos in range(4):
        for k, op in enumerate(ops):
            if op is not None:
                mask = (apply & (order[:, pos] == k)).view(-1, 1, 1, 1)
                x = torch.where(mask, op[0](x, op[1]), x)
    return x


def _edgy_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random images in [0, 1] with exact 0s and 1s, gray pixels and ties between channels: the
    branches of the HSV conversion and the clamp's boundary."""
    x = torch.rand(n, 3, size, size, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.1, (x > 0.5).float(), x)
    tie = torch.rand(n, size, size, generator=gen) < 0.2
    x[:, 1] = torch.where(tie, x[:, 0], x[:, 1])
    x[:, 2] = torch.where(torch.rand(n, size, size, generator=gen) < 0.1, x[:, 1], x[:, 2])
    x[: n // 4, :, : size // 2] = x[: n // 4, :1, : size // 2]  # gray regions: delta = 0
    return x


@pytest.mark.parametrize("size", [1, 5, 16, 33])
def test_whole_batch_jitter_equals_the_old_whole_batch_path(size: int) -> None:
    """The fused sync-free path (three blend passes, hue once, three blend passes) gives the old
    path's floats bit for bit and draws the same numbers, for every order of the four operations,
    with hue on and off, jitter on all, none or some samples, and factors that clamp."""
    perms, clamped = set(), False
    strengths = [(0.4, 0.4, 0.4, 0.1), (0.9, 0.8, 1.0, 0.5), (1.0, 1.0, 1.0, 0.0),
                 (0.0, 0.6, 0.0, 0.3), (2.0, 2.0, 2.0, 0.5)]
    for seed, (strength, p) in enumerate(itertools.product(strengths, (1.0, 0.7, 0.0))):
        gen = torch.Generator().manual_seed(seed)
        n = 48 + seed % 5
        x = _edgy_images(n, size, gen)
        apply = torch.rand(n, generator=gen) < p
        g_new, g_old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        new = A.color_jitter(x, strength, apply, g_new, subset=False)
        old = _old_whole_batch_jitter(x.clone(), strength, apply, g_old)
        assert torch.equal(new.view(torch.int32), old.view(torch.int32)), (size, strength, p)
        assert torch.equal(g_new.get_state(), g_old.get_state())
        draws = torch.Generator().manual_seed(seed)
        torch.rand(4, n, generator=draws)
        order = torch.rand(n, 4, generator=draws).argsort(1)
        perms |= {tuple(o) for o in order[apply].tolist()}
        clamped |= bool(((new == 0) | (new == 1))[apply].any()) and strength[0] >= 1
    assert len(perms) == 24 and clamped


class _OpRecorder(TorchDispatchMode):
    """The aten ops a region dispatches, with whether any takes a boolean index tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        name = func._schema.name.removeprefix("aten::")
        flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else (arg,))]
        masks = [a for a in flat[1:] if isinstance(a, torch.Tensor)
                 and a.dtype in (torch.bool, torch.uint8)]
        if name.startswith("index") and masks:
            name += "(boolean mask)"
        self.names.add(name)
        return func(*args, **(kwargs or {}))


# Ops whose output shape or control flow depends on the data: on a GPU each reads back to the host.
_SYNCING = {"nonzero", "nonzero_static", "_local_scalar_dense", "masked_select", "masked_scatter",
            "bincount", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
            "repeat_interleave", "item", "equal", "is_nonzero"}


def test_whole_batch_path_issues_no_data_dependent_ops() -> None:
    """The GPU path (jitter, grayscale, blur) has shapes fixed by the batch alone: no op that
    would make a GPU wait for the host. The subset path is the positive control."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=gen)
    norm = A.make_normalizer("dataset", images, torch.device("cpu"))
    aug = A.SSLAugment(AugmentConfig(blur_p=0.5, gray_p=0.5), norm, 12)
    recorded = {}
    for subset in (False, True):
        aug.subset = subset
        with _OpRecorder() as rec:
            aug(images, torch.Generator().manual_seed(1))
        recorded[subset] = {n for n in rec.names if n in _SYNCING or n.endswith("(boolean mask)")}
    assert recorded[False] == set()
    assert "nonzero" in recorded[True]
