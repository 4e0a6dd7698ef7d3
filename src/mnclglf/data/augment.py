"""Batched augmentation on the training device, with per-sample random parameters.

The whole dataset stays on the device as uint8; each step draws a batch of indices
and these functions turn it into float views in a handful of large kernels: one
``grid_sample`` for random-resized-crop + flip, vectorised colour jitter (in a random
order per sample, as torchvision does), grayscale, and a per-sample-sigma Gaussian
blur as one grouped convolution. Randomness comes from an explicit
``torch.Generator`` so that a checkpoint can restore it.
"""

from __future__ import annotations

import math

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


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([
        torch.stack([v, q, p, p, t, v], 1),
        torch.stack([t, v, v, q, p, p], 1),
        torch.stack([p, p, t, v, v, q], 1),
    ], 1)  # (N, 3, 6, H, W)
    return choices.gather(2, i.unsqueeze(1).unsqueeze(2).expand(-1, 3, 1, -1, -1)).squeeze(2)


def color_jitter(x: torch.Tensor, strength: tuple[float, float, float, float], apply: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter per sample: brightness, contrast, saturation, hue in a random order.

    Samples where ``apply`` is false are left unchanged. Each of the four passes runs
    every operation with an identity factor for the samples whose permutation puts a
    different operation at that position, so the whole batch stays in one kernel each.
    """
    n, device = x.shape[0], x.device
    b, c, s, hue = strength
    fb = _uniform(n, max(0.0, 1 - b), 1 + b, gen, device)
    fc = _uniform(n, max(0.0, 1 - c), 1 + c, gen, device)
    fs = _uniform(n, max(0.0, 1 - s), 1 + s, gen, device)
    fh = _uniform(n, -hue, hue, gen, device)
    order = torch.rand(n, 4, generator=gen, device=device).argsort(1)
    for pos in range(4):
        op = torch.where(apply, order[:, pos], torch.full_like(order[:, pos], -1))
        one = torch.ones_like(fb)
        x = _blend(x, torch.zeros_like(x), torch.where(op == 0, fb, one))
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean.expand_as(x), torch.where(op == 1, fc, one))
        x = _blend(x, _gray(x).expand_as(x), torch.where(op == 2, fs, one))
        shift = torch.where(op == 3, fh, torch.zeros_like(fh))
        if hue > 0:  # no data-dependent skip: checking `(op == 3).any()` would sync the host with the GPU
            hsv = _rgb_to_hsv(x)
            hsv = torch.stack([(hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            x = torch.where((op == 3).view(-1, 1, 1, 1), _hsv_to_rgb(hsv), x)
    return x


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
    x = images.float().div_(255)
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

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, n, device = self.cfg, batch.shape[0], batch.device
        x = batch.float().div_(255)
        boxes = crop_boxes(n, x.shape[2], x.shape[3], cfg.crop_scale, cfg.crop_ratio, gen, device)
        flip = torch.rand(n, generator=gen, device=device) < cfg.flip_p
        x = resized_crop(x, boxes, self.size, flip, cfg.interpolation).clamp_(0, 1)
        jitter = torch.rand(n, generator=gen, device=device) < cfg.jitter_p
        x = color_jitter(x, cfg.jitter, jitter, gen)
        gray = torch.rand(n, generator=gen, device=device) < cfg.gray_p
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        blur = torch.rand(n, generator=gen, device=device) < cfg.blur_p
        sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, device)
        if cfg.blur_p > 0:
            x = torch.where(blur.view(-1, 1, 1, 1), gaussian_blur(x, sigma, self.kernel), x)
        return self.normalizer(x)


class CropFlipAugment:
    """Linear-eval / supervised training augmentation: random resized crop and flip only."""

    def __init__(self, scale: tuple[float, float], flip_p: float, normalizer: Normalizer, size: int,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), mode: str = "bilinear") -> None:
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p
        self.normalizer, self.size, self.mode = normalizer, size, mode

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, device = batch.shape[0], batch.device
        x = batch.float().div_(255)
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
        x = batch.float().div_(255)
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
