"""The 15 common corruptions of Hendrycks & Dietterich (ImageNet-C / CIFAR-10-C), in torch.

Every function maps a batch ``x`` (B, C, H, W) float in [0, 1] and one ``torch.Generator`` per
image to the corrupted batch, float in [0, 1]. The randomness of image ``i`` comes only from
``generators[i]``, so an image's corruption does not depend on the batch it is in; the pixel
work (convolutions, resampling, swaps) runs on the whole batch at once.

Severity constants are CIFAR-10-C's (``make_cifar_c.py``, built for 32x32 images, the nearest
scale to Fashion-MNIST's 28x28), not ImageNet-C's. Adaptations to 28x28 grayscale are listed in
the plugin README and next to each function.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .names import ALLOWED_NAMES, check_corruption, check_severity

Gens = Sequence[torch.Generator]

# -- helpers ------------------------------------------------------------------------------------


def _per_image(gens: Gens, fn: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
    """Stack one draw per image (each from its own generator)."""
    return torch.stack([fn(g) for g in gens])


def _gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    radius = radius if radius is not None else max(1, int(math.ceil(4 * sigma)))  # skimage truncate=4
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, reflect borders (skimage.filters.gaussian: mode 'nearest' is its
    default; the corruptions call it with the default, so replicate borders)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma).to(x)
    r = (k.numel() - 1) // 2
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) of every channel with one 2-D kernel."""
    kh, kw = kernel.shape
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    ph, pw = kh // 2, kw // 2
    if ph < h and pw < w:
        y = F.pad(y, (pw, pw, ph, ph), mode="reflect")
    else:
        y = F.pad(y, (pw, pw, ph, ph), mode="replicate")
    return F.conv2d(y, kernel.to(x).view(1, 1, kh, kw)).reshape(b, c, h, w)


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The defocus kernel: a disk of ``radius`` on a 17x17 grid, normalized, then a 3x3 Gaussian
    blur with sigma ``alias_blur`` (cv2.GaussianBlur, ksize (3, 3), reflect-101 borders)."""
    L = torch.arange(-8, 9, dtype=torch.float32)
    X, Y = torch.meshgrid(L, L, indexing="xy")
    d = ((X**2 + Y**2) <= radius**2).float()
    d = d / d.sum()
    k = _gaussian_kernel1d(alias_blur, radius=1)
    return _filter2d(d.view(1, 1, 17, 17), torch.outer(k, k))[0, 0]


def _sample(x: torch.Tensor, grid: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Bilinear sampling at pixel coordinates ``grid`` (B, H, W, 2) as (x, y)."""
    h, w = x.shape[-2:]
    g = torch.stack([grid[..., 0] * 2 / (w - 1) - 1, grid[..., 1] * 2 / (h - 1) - 1], dim=-1)
    return F.grid_sample(x, g, mode="bilinear", padding_mode=padding, align_corners=True)


def _pixel_grid(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([xs, ys], -1).expand(b, h, w, 2)


def clipped_zoom(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Zoom into the centre by ``factor`` (>= 1) keeping the size: crop ceil(h / factor) pixels
    about the centre and resize bilinearly (scipy.ndimage.zoom order 1 in the original).
    ``factor`` is a float or one per image (B,)."""
    b, _, h, w = x.shape
    f = torch.as_tensor(factor, dtype=torch.float32, device=x.device).expand(b).view(b, 1, 1, 1)
    grid = _pixel_grid(b, h, w, x.device)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    centre = torch.tensor([cx, cy], device=x.device)
    return _sample(x, (grid - centre) / f.view(b, 1, 1, 1) + centre)


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage: a one-sided Gaussian-weighted average of the pixels
    ``0..radius`` steps away along ``angle`` (degrees, one per image), borders replicated."""
    b, _, h, w = x.shape
    n = int(radius) + 1
    wts = torch.exp(-0.5 * (torch.arange(n, dtype=torch.float32) / sigma) ** 2)
    wts = wts / wts.sum()
    rad = angles.float().to(x.device) * math.pi / 180
    step = torch.stack([torch.cos(rad), torch.sin(rad)], -1).view(b, 1, 1, 2)
    grid = _pixel_grid(b, h, w, x.device)
    out = torch.zeros_like(x)
    for i in range(n):
        out = out + wts[i] * _sample(x, grid + i * step)
    return out


def plasma_fractal(gens: Gens, mapsize: int = 32, wibbledecay: float = 3.0) -> torch.Tensor:
    """Diamond-square height maps in [0, 1]: (B, mapsize, mapsize), one per generator, computed
    for the whole batch at once (the CIFAR-10-C ``plasma_fractal`` with mapsize 32)."""
    b = len(gens)
    m = torch.zeros(b, mapsize, mapsize, dtype=torch.float64)
    stepsize, wibble = mapsize, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        u = _per_image(gens, lambda g: torch.rand(a.shape[1:], generator=g, dtype=torch.float64))
        return a / 4 + wibble * (u * 2 * wibble - wibble)

    while stepsize >= 2:
        half = stepsize // 2
        corner = m[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        sq = corner + torch.roll(corner, -1, 1)
        sq = sq + torch.roll(sq, -1, 2)
        m[:, half:mapsize:stepsize, half:mapsize:stepsize] = wibbled(sq)
        dr = m[:, half:mapsize:stepsize, half:mapsize:stepsize]
        ul = m[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2)
        m[:, 0:mapsize:stepsize, half:mapsize:stepsize] = wibbled(lt)
        tt = dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1)
        m[:, half:mapsize:stepsize, 0:mapsize:stepsize] = wibbled(tt)
        stepsize //= 2
        wibble /= wibbledecay
    m = m - m.amin((1, 2), keepdim=True)
    return (m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)).float()


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


# -- the 15 corruptions ---------------------------------------------------------------------------
# noise


def gaussian_noise(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    n = _per_image(gens, lambda g: torch.randn(x.shape[1:], generator=g))
    return (x + c * n.to(x)).clamp(0, 1)


def shot_noise(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    c = [500, 250, 100, 75, 50][s - 1]
    return torch.stack([torch.poisson(xi * c, generator=g) for xi, g in zip(x, gens)]).div(c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """skimage ``random_noise(mode='s&p', amount=c)``: a fraction c of the pixels (of every
    channel) becomes 0 or 1 with equal chance."""
    c = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    u = _per_image(gens, lambda g: torch.rand((2, *x.shape[1:]), generator=g)).to(x)
    hit, salt = u[:, 0] < c, u[:, 1] < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


# blur


def defocus_blur(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    r, a = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    return _filter2d(x, _disk(r, a)).clamp(0, 1)


def glass_blur(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """Blur, quantize to uint8, then locally shuffle pixels: for every position (h, w) from the
    bottom-right corner inward, swap it with a neighbour offset by randint(-d, d) (high
    exclusive, as numpy), ``iterations`` times, then blur again. The sequential swap order is
    kept; each swap runs on the whole batch at once with per-image offsets."""
    sigma, d, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    b, c, h, w = x.shape
    y = (gaussian_blur(x, sigma) * 255).floor().clamp(0, 255)  # np.uint8(... * 255)
    positions = [(i, j) for i in range(h - d, d, -1) for j in range(w - d, d, -1)]
    offs = _per_image(gens, lambda g: torch.randint(-d, d, (iters, len(positions), 2), generator=g))  # (B, it, P, 2)
    flat = y.reshape(b, c, h * w).clone()
    ar = torch.arange(b)
    for it in range(iters):
        for k, (i, j) in enumerate(positions):
            dx, dy = offs[:, it, k, 0], offs[:, it, k, 1]
            a_idx = torch.full((b,), i * w + j)
            p_idx = (i + dy) * w + (j + dx)
            va, vp = flat[ar, :, a_idx].clone(), flat[ar, :, p_idx].clone()
            flat[ar, :, a_idx], flat[ar, :, p_idx] = vp, va
    return gaussian_blur(flat.reshape(b, c, h, w) / 255, sigma).clamp(0, 1)


def motion_blur_corruption(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    angles = _per_image(gens, lambda g: torch.rand((), generator=g) * 90 - 45)
    return motion_blur(x, radius, sigma, angles).clamp(0, 1)


def zoom_blur(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    factors = np.arange(1, top, 0.01)
    out = torch.zeros_like(x)
    for f in factors:
        out = out + clipped_zoom(x, float(f))
    return ((x + out) / (len(factors) + 1)).clamp(0, 1)


# weather


def snow(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """A thresholded Gaussian snow layer, zoomed, motion-blurred at an angle in (-135, -45)
    degrees, added twice (as is and rotated 180 degrees); the image is first lightened towards
    max(x, 1.5 gray + 0.5). On grayscale images gray = x."""
    loc, scale, zoom, thr, radius, sigma, blend = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    b, c, h, w = x.shape
    layer = _per_image(gens, lambda g: torch.randn((1, h, w), generator=g)) * scale + loc
    layer = clipped_zoom(layer.to(x), zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = _per_image(gens, lambda g: torch.rand((), generator=g) * 90 - 135)
    layer = motion_blur(layer, radius, sigma, angles)
    y = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (y + layer + torch.rot90(layer, 2, (-2, -1))).clamp(0, 1)


def frost_texture(gens: Gens, h: int, w: int) -> torch.Tensor:
    """A procedural frost layer in [0, 1] (B, 1, h, w), standing in for the six frost photographs
    ImageNet-C/CIFAR-10-C crop from (not shipped in any installable package): a diamond-square
    haze (the grey, patchy base of frost on glass) plus thin bright crystal streaks (sparse seeds
    motion-blurred along a random direction each)."""
    b = len(gens)
    base = plasma_fractal(gens, 32, 1.6)[:, None, :h, :w]  # (B, 1, h, w)
    seeds = _per_image(gens, lambda g: (torch.rand((1, h, w), generator=g) > 0.93).float())
    angles = _per_image(gens, lambda g: torch.rand((), generator=g) * 360)
    streaks = motion_blur(seeds, 6, 3, angles) * 3
    return (0.55 * base + 0.6 * streaks).clamp(0, 1)


def frost(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    a, f = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    tex = frost_texture(gens, x.shape[-2], x.shape[-1]).to(x)
    return (a * x + f * tex).clamp(0, 1)


def fog(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    c, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    h, w = x.shape[-2:]
    size = 1 << max(h, w, 2).bit_length() if max(h, w) & (max(h, w) - 1) else max(h, w)
    maxv = x.amax((1, 2, 3), keepdim=True)
    y = x + c * plasma_fractal(gens, size, decay)[:, None, :h, :w].to(x)
    return (y * maxv / (maxv + c)).clamp(0, 1)


# digital


def brightness(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """V += c in HSV; for a grayscale image V is the image itself, so x + c."""
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    mx = x.amax(1, keepdim=True)
    new = (mx + c).clamp(0, 1)
    return (x * new / mx.clamp_min(1e-8)).clamp(0, 1)  # HSV: hue and saturation kept, V raised


def contrast(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    m = x.mean((2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0, 1)


def elastic_transform(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """A random affine warp of three reference points, then a smooth random displacement field
    (uniform noise blurred with sigma, scaled by alpha); both bilinear with reflected borders.
    Constants are CIFAR-10-C's, which scale with the image size (28 here)."""
    b, c, h, w = x.shape
    size = float(min(h, w))
    alpha, sigma, aff = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                         (0.1, 0.03, 0.03)][s - 1]
    alpha, sigma, aff = alpha * size, sigma * size, aff * size
    cs = size // 2
    sq = size // 3
    src = torch.tensor([[cs + sq, cs + sq], [cs + sq, cs - sq], [cs - sq, cs - sq]], dtype=torch.float64)
    jitter = _per_image(gens, lambda g: torch.rand((3, 2), generator=g, dtype=torch.float64) * 2 * aff - aff)
    dst = src + jitter  # (B, 3, 2)
    # affine M with dst = M [src; 1]; warpAffine samples the input at M^-1 (output pixel)
    ones = torch.ones(3, 1, dtype=torch.float64)
    S = torch.cat([src, ones], 1)  # (3, 3)
    M = torch.linalg.solve(S, dst).transpose(1, 2)  # (B, 2, 3)
    Mf = torch.cat([M, torch.tensor([0, 0, 1.0], dtype=torch.float64).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(Mf)[:, :2].float().to(x.device)  # (B, 2, 3)
    grid = _pixel_grid(b, h, w, x.device)
    pts = torch.cat([grid, torch.ones(b, h, w, 1, device=x.device)], -1)  # (B, H, W, 3)
    src_pts = torch.einsum("bij,bhwj->bhwi", inv, pts)
    y = _sample(x, src_pts, "reflection")
    disp = _per_image(gens, lambda g: torch.rand((2, h, w), generator=g) * 2 - 1).to(x)
    if sigma > 0:
        disp = gaussian_blur(disp, sigma)
    disp = disp * alpha  # (B, 2, H, W): dx, dy
    return _sample(y, grid + disp.permute(0, 2, 3, 1), "reflection").clamp(0, 1)


def pixelate(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """PIL BOX down to int(size * c), then BOX back up: area averaging down, nearest up."""
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(int(h * c), int(w * c)), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest").clamp(0, 1)


def jpeg_compression(x: torch.Tensor, s: int, gens: Gens) -> torch.Tensor:
    """PIL JPEG at quality c, image by image (a 28x28 JPEG round trip costs ~0.1 ms; a torch
    DCT port would not pay off)."""
    q = [80, 65, 58, 50, 40][s - 1]
    out = []
    for xi in x:
        arr = (xi * 255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
        dec = dec[..., None] if dec.ndim == 2 else dec
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(x)


#: name -> function, in the benchmark's order (noise, blur, weather, digital).
CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, Gens], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur_corruption,
    "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog,
    "brightness": brightness, "contrast": contrast, "elastic_transform": elastic_transform,
    "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
assert tuple(CORRUPTIONS) == ALLOWED_NAMES  # one list of names, in the benchmark's order


def corrupt(x: torch.Tensor, name: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """Corrupt a batch (B, C, H, W) in [0, 1] with corruption ``name`` at ``severity`` (1-5);
    image ``i`` draws its randomness from ``seeds[i]`` only. Returns float in [0, 1]."""
    fn = CORRUPTIONS[check_corruption(name)]
    severity = check_severity(severity)
    if len(seeds) != x.shape[0]:
        raise ValueError(f"corrupt: {x.shape[0]} images but {len(seeds)} seeds")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        return fn(x.float().clamp(0, 1), severity, gens).clamp(0, 1)
