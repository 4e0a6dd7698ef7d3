"""Batched augmentation on the training device, with per-sample random parameters.

The whole dataset stays on the device as uint8; each step draws a batch of indices
and these functions turn it into float views in a handful of large kernels: one
``grid_sample`` for random-resized-crop + flip, vectorised colour jitter (in a random
order per sample, as torchvision does), grayscale, and a per-sample-sigma Gaussian
blur as one grouped convolution. On the CPU each jitter operation, the grayscale and
the blur run only on the samples drawn for them; on a GPU on the whole batch, the
result selected per sample, so that no index is read back to the host (the jitter's
three blends fused into one pass per position, its hue round trip run once). Randomness
comes from an explicit ``torch.Generator`` so that a checkpoint can restore it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mnclglf.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               gen: torch.Generator, device: torch.device, tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling, for ``n`` images at once.

    Returns (n, 4) float boxes ``(top, left, h, w)``: the first of ``tries`` candidates
    that fits, else torchvision's centre-crop fall-back.
    """
    area = height * width
    target = area * _uniform(n * tries, scale[0], scale[1], gen, device).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), gen, device).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    # Centre-crop fall-back, exactly as torchvision computes it.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    idx = first.clamp(min=0).unsqueeze(1)
    hh = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.full((n,), float(fh), device=device))
    ww = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.full((n,), float(fw), device=device))
    u = torch.rand(n, 2, generator=gen, device=device)
    top = torch.where(first >= 0, torch.floor(u[:, 0] * (height - hh + 1)), torch.full((n,), float((height - fh) // 2), device=device))
    left = torch.where(first >= 0, torch.floor(u[:, 1] * (width - ww + 1)), torch.full((n,), float((width - fw) // 2), device=device))
    return torch.stack([top, left, hh, ww], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None,
                 mode: str = "bilinear") -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w) out of float ``x`` and resize each to ``size``² in one ``grid_sample``."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    sx = w / width
    sy = h / height
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _gray3(x: torch.Tensor) -> torch.Tensor:
    return _gray(x).expand_as(x)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``; ``b`` may be broadcast (a per-sample mean, a gray plane)."""
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``_blend`` with black, without the zero image: ``f·x + (1 − f)·0`` is exactly ``f·x`` for x ≥ 0."""
    return (factor.view(-1, 1, 1, 1) * x).clamp_(0, 1)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue, saturation and value planes (N×H×W each) of RGB images in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    minc = x.amin(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), 0.0)
    safe = torch.where(delta > 0, delta, 1.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return h, s, maxc


@functools.cache
def _sector_planes(device: torch.device) -> torch.Tensor:
    """Which of the planes (v, q, p, t) R, G and B take in each of the six hue sectors; made once per
    device, as a host-to-device copy at every call would sync a GPU with the host."""
    return torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=device)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RGB images (N×3×H×W) of hue, saturation and value planes: one gather from the 4 distinct planes."""
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    planes = torch.stack([v, q, p, t], 1)
    index = _sector_planes(h.device)[i.long() % 6].permute(0, 3, 1, 2)
    return planes.gather(1, index)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb((h + shift.view(-1, 1, 1)) % 1.0, s, v)


def _on_samples(x: torch.Tensor, mask: torch.Tensor, fn: Callable[..., torch.Tensor], *params: torch.Tensor,
                subset: bool) -> torch.Tensor:
    """``fn(x, *params)`` (per-sample operations, per-sample ``params``) for the samples of ``mask``.

    ``subset``: index-select those samples, apply, write them back into ``x`` (in place): work
    in proportion to the samples chosen, but reading the indices syncs a GPU with the host.
    Otherwise apply to the whole batch and select with ``torch.where``: no sync, the GPU path.
    Both give the same values.
    """
    if not subset:
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, *params), x)
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), *(p.index_select(0, idx) for p in params)))
    return x


def _default_subset(x: torch.Tensor) -> bool:
    return x.device.type == "cpu"


def color_jitter(x: torch.Tensor, strength: tuple[float, float, float, float], apply: torch.Tensor,
                 gen: torch.Generator, subset: bool | None = None) -> torch.Tensor:
    """torchvision's ColorJitter per sample: brightness, contrast, saturation, hue in a random order.

    Samples where ``apply`` is false are left unchanged; ``x`` is in [0, 1]. Position by position,
    each operation runs on the samples whose permutation puts it there (``subset``, default on
    the CPU), or all run on the whole batch in passes of fixed shapes (no host sync: the default
    on a GPU; :func:`_jitter_whole_batch`). Both give the same floats.
    """
    n, device = x.shape[0], x.device
    subset = _default_subset(x) if subset is None else subset
    b, c, s, hue = strength
    fb = _uniform(n, max(0.0, 1 - b), 1 + b, gen, device)
    fc = _uniform(n, max(0.0, 1 - c), 1 + c, gen, device)
    fs = _uniform(n, max(0.0, 1 - s), 1 + s, gen, device)
    fh = _uniform(n, -hue, hue, gen, device)
    order = torch.rand(n, 4, generator=gen, device=device).argsort(1)
    ops = [(_brightness, fb), (_contrast, fc), (_saturation, fs), (_hue, fh) if hue > 0 else None]
    if subset:
        return _jitter_subsets(x, ops, order, apply)
    return _jitter_whole_batch(x, (fb, fc, fs), fh if hue > 0 else None, order, apply)


@functools.cache
def _gray_weights(device: torch.device) -> torch.Tensor:
    """``_GRAY`` as a (1, 3, 1, 1) tensor, made once per device (see :func:`_sector_planes`)."""
    return torch.tensor(_GRAY, device=device).view(1, 3, 1, 1)


def _blend_pass(x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, contrast: torch.Tensor,
                saturation: torch.Tensor) -> torch.Tensor:
    """One of brightness, contrast or saturation per sample, as one ``_blend``
    ``(f·x + g·target).clamp(0, 1)``, ``g = 1 − f``, all of shape (n, 1, 1, 1).

    The target is the gray plane (saturation), its mean (contrast) or 0 (brightness):
    ``g·0`` adds ±0, so brightness gives ``_brightness``'s ``f·x`` exactly; ``f`` = 1 with
    target 0 leaves an image in [0, 1] unchanged. The same roundings as the three
    functions, one pass over the batch instead of three.
    """
    r, g_, b = (x * _gray_weights(x.device)).unbind(1)
    gray = (r + g_ + b).unsqueeze(1)  # _gray's roundings, the three products in one kernel
    mean = torch.where(contrast, gray.mean(dim=(1, 2, 3), keepdim=True), 0.0)
    return (f * x).add_(g * torch.where(saturation, gray, mean)).clamp_(0, 1)


def _jitter_whole_batch(x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                        shift: torch.Tensor | None, order: torch.Tensor,
                        apply: torch.Tensor) -> torch.Tensor:
    """The sync-free path of :func:`color_jitter`: the same operations in the same order per sample
    as the subset path, on the whole batch, with shapes that do not depend on the draws.

    Each sample applies its three blends (brightness, contrast, saturation; ``factors``) in its
    drawn order, with the hue shift between them after ``a`` of them (``a``: hue's drawn position).
    The operations of a sample touch only that sample, so they may be split into passes freely
    as long as each sample's order is kept: three blend passes where blend ``k`` applies if
    ``k < a`` (identity otherwise), one hue pass on the whole batch (the costly HSV round trip,
    once), three where it applies if ``k ≥ a``. Without hue, three blend passes. Samples not
    drawn for the jitter get their input back in one final ``torch.where``. Needs ``x`` in
    [0, 1], as the subset path: an identity pass clamps.
    """
    n = x.shape[0]
    k = torch.arange(3, device=x.device)
    a = order.argsort(1)[:, 3:]  # hue's position = the blends before it
    codes = order.gather(1, k + (k >= a))  # the blends (0, 1, 2), in the drawn order, hue skipped
    f = torch.stack(factors, 1).gather(1, codes)
    if shift is not None:
        first = k < a
        active = torch.cat([first, ~first], 1)
        f = torch.where(active, f.repeat(1, 2), 1.0)
        codes = torch.where(active, codes.repeat(1, 2), 0)  # inactive: brightness by 1, identity
    passes = codes.shape[1]
    f, codes = f.t().reshape(passes, n, 1, 1, 1), codes.t().reshape(passes, n, 1, 1, 1)
    g, contrast, saturation = 1 - f, codes == 1, codes == 2
    y = x
    for p in range(passes):
        if p == 3 and shift is not None:
            y = _hue(y, shift)
        y = _blend_pass(y, f[p], g[p], contrast[p], saturation[p])
    return torch.where(apply.view(-1, 1, 1, 1), y, x)


def _jitter_subsets(x: torch.Tensor, ops: list[tuple[Callable[..., torch.Tensor], torch.Tensor] | None],
                    order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """The subset path of :func:`color_jitter`: the jittered samples are gathered once and, position
    by position, sorted by the operation there, so that each operation runs on one contiguous slice;
    one gather per position and one scatter at the end. Few, large calls: on a shared CPU every call
    split across threads waits for all of them."""
    rows = apply.nonzero().squeeze(1)  # the sample each row of xs holds
    if not rows.numel():
        return x
    xs, codes = x.index_select(0, rows), order.index_select(0, rows)
    for pos in range(4):
        sort = codes[:, pos].argsort(stable=True)
        rows, codes, xs = rows[sort], codes[sort], xs[sort]
        counts = torch.bincount(codes[:, pos], minlength=4).tolist()
        parts = []
        for op, part, who in zip(ops, xs.split(counts), rows.split(counts)):
            parts.append(part if op is None or not who.numel() else op[0](part, op[1][who]))
        xs = torch.cat(parts)
    return x.index_copy(0, rows, xs)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, as one grouped convolution per axis."""
    n, ch, h, w = x.shape
    half = kernel // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n·ch, kernel)
    y = x.reshape(1, n * ch, h, w)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), k.view(n * ch, 1, 1, kernel), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), k.view(n * ch, 1, kernel, 1), groups=n * ch)
    return y.view(n, ch, h, w)


def blur_kernel_size(size: int, frac: float) -> int:
    """An odd kernel side of about ``frac`` of the image side (SimCLR uses 10%), at least 3."""
    k = max(3, int(round(size * frac)))
    return k if k % 2 else k + 1


class Normalizer:
    """Per-channel (x − mean) / std on float images in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel of a uint8 N×3×H×W tensor, in [0, 1] units."""
    x = torch.div(images, 255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def make_normalizer(kind: str, images: torch.Tensor, device: torch.device) -> Normalizer:
    if kind == "imagenet":
        return Normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
    if kind == "dataset":
        return Normalizer(*channel_stats(images), device)
    return Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), device)


class SSLAugment:
    """The self-supervised view generator: crop, flip, jitter, grayscale, blur, normalise."""

    def __init__(self, cfg: AugmentConfig, normalizer: Normalizer, image_size: int) -> None:
        self.cfg = cfg
        self.normalizer = normalizer
        self.size = cfg.size or image_size
        self.kernel = blur_kernel_size(self.size, cfg.blur_kernel_frac)
        self.subset: bool | None = None  # None: per device (see color_jitter); tests set it to compare the paths

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, n, device = self.cfg, batch.shape[0], batch.device
        subset = _default_subset(batch) if self.subset is None else self.subset
        x = torch.div(batch, 255)  # uint8 → float32 in one pass, the same values as .float().div_(255)
        boxes = crop_boxes(n, x.shape[2], x.shape[3], cfg.crop_scale, cfg.crop_ratio, gen, device)
        flip = torch.rand(n, generator=gen, device=device) < cfg.flip_p
        x = resized_crop(x, boxes, self.size, flip, cfg.interpolation).clamp_(0, 1)
        jitter = torch.rand(n, generator=gen, device=device) < cfg.jitter_p
        x = color_jitter(x, cfg.jitter, jitter, gen, subset)
        gray = torch.rand(n, generator=gen, device=device) < cfg.gray_p
        x = _on_samples(x, gray, _gray3, subset=subset)
        blur = torch.rand(n, generator=gen, device=device) < cfg.blur_p
        sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, device)
        if cfg.blur_p > 0:
            x = _on_samples(x, blur, self._blur, sigma, subset=subset)
        return self.normalizer(x)

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, sigma, self.kernel)


class CropFlipAugment:
    """Linear-eval / supervised training augmentation: random resized crop and flip only."""

    def __init__(self, scale: tuple[float, float], flip_p: float, normalizer: Normalizer, size: int,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), mode: str = "bilinear") -> None:
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p
        self.normalizer, self.size, self.mode = normalizer, size, mode

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, device = batch.shape[0], batch.device
        x = torch.div(batch, 255)
        boxes = crop_boxes(n, x.shape[2], x.shape[3], self.scale, self.ratio, gen, device)
        flip = torch.rand(n, generator=gen, device=device) < self.flip_p
        return self.normalizer(resized_crop(x, boxes, self.size, flip, self.mode).clamp_(0, 1))


class EvalTransform:
    """Test-time transform, no randomness: resize, centre-crop, normalise.

    With ``resize`` = 0 the image is resized straight to ``size``² (if it differs);
    otherwise its shorter side is resized to ``resize`` and the centre ``size``² crop is
    kept (torchvision's ``Resize(resize)`` + ``CenterCrop(size)``).
    """

    def __init__(self, normalizer: Normalizer, size: int, resize: int = 0, mode: str = "bilinear") -> None:
        self.normalizer, self.size, self.resize, self.mode = normalizer, size, resize, mode

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = torch.div(batch, 255)
        h, w = x.shape[-2:]
        if self.resize:
            short = min(h, w)
            out = (self.resize, int(self.resize * w / h)) if h == short else (int(self.resize * h / w), self.resize)
        else:
            out = (self.size, self.size)
        if (h, w) != out:
            x = F.interpolate(x, size=out, mode=self.mode, align_corners=False, antialias=True)
            if self.mode == "bicubic":
                x = x.clamp_(0, 1)
        if self.resize:
            top = int(round((out[0] - self.size) / 2.0))
            left = int(round((out[1] - self.size) / 2.0))
            x = x[..., top:top + self.size, left:left + self.size]
        return self.normalizer(x)
