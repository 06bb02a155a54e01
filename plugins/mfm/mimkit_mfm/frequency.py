"""MFM's frequency-domain pieces (Xie et al. 2023, "Masked Frequency Modeling"; official code: Jiahao000/MFM): the ``frequency`` masker, the
``frequency`` target and the ``frequency_distance`` loss.

Masker (official ``MFM.frequency_transform`` + ``FreqMaskGenerator``):
    normalized x (B, C, H, W) -> un-normalize to [0, 1] -> fft2 (default norm) -> fftshift
    -> keep a disc d^2 < r^2 around (H//2, W//2) (low-pass) or its complement (high-pass)
    -> ifftshift -> ifft2 -> real part -> clamp [0, 1] -> normalize again     = mask.corrupted
    The removed frequencies (B, C, H, W), True = removed, are ``mask.domain_mask``; no token is
    hidden (``Mask.none``), the encoder sees the whole corrupted image.
Target: the orthonormal, shifted spectrum of the original normalized image, as real/imaginary
    pairs (B, C, H, W, 2).
Loss: the decoder predicts an image (B, C, H, W); its orthonormal shifted spectrum is compared
    with the target's: sqrt(dRe^2 + dIm^2 + 1e-12) ** gamma, averaged over the removed
    frequencies of the whole batch and over the channels.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Loss, LossConfig, Mask, Masker, Outputs

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) real -> (B, C, H, W, 2): orthonormal 2D FFT, DC shifted to (H//2, W//2),
    as (real, imaginary) pairs (the official ``FrequencyLoss.tensor2freq`` with patch_factor 1)."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 FFT under mixed precision
        freq = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="ortho"), dim=(-2, -1))
    return torch.view_as_real(freq)


def removed_frequencies(h: int, w: int, radius: float, radius2: float | None, lowpass: bool,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) bool, True = removed, in the fftshift-ed layout.

    Distances are in pixels from index (H//2, W//2). Low-pass keeps d^2 < radius^2 (strict);
    with ``radius2`` it also keeps d^2 >= radius2^2 (removing the band between the radii).
    High-pass is the complement.
    """
    ys = torch.arange(h, device=device, dtype=torch.float64)[:, None] - h // 2
    xs = torch.arange(w, device=device, dtype=torch.float64)[None, :] - w // 2
    d2 = ys**2 + xs**2  # (H, W)
    band = d2 >= radius**2
    if radius2 is not None:
        band = band & (d2 < radius2**2)
    return band if lowpass else ~band


def frequency_filter(x01: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Zero the ``removed`` frequencies of ``x01`` (B, C, H, W): the real part of the inverse FFT,
    *not* clamped. ``removed`` broadcasts to (B, C, H, W) in the shifted layout."""
    freq = torch.fft.fftshift(torch.fft.fft2(x01.float()), dim=(-2, -1))  # default norm, as the official masking
    freq = freq * (~removed).to(freq.real.dtype)
    return torch.fft.ifft2(torch.fft.ifftshift(freq, dim=(-2, -1))).real


def _prob(_inst: Any, _attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"p_lowpass must be in [0, 1], got {value}")


class FrequencyMasker(Masker):
    """Low- or high-pass filter each image in the FFT domain (MFM); hides no token.

    ``sample_noise`` draws one uniform number per sample: low-pass when it is below
    ``p_lowpass`` (0.5 for ViT, 0.3 for ResNet-50 in the official configs), else high-pass.
    ``mean``/``std`` are the dataset normalization of the input, undone before the FFT and
    re-applied after (the official code filters [0, 1] images). ``radius`` is in pixels and is
    not scaled with the image size, as in the official code.
    """

    token_masks = False  # it corrupts the input: an explicit token mask cannot stand for it

    @attrs.define(kw_only=True)
    class Config:
        radius: float = 16.0
        radius2: float | None = None  # band version; None (or the official 999 at 224) disables
        p_lowpass: float = attrs.field(default=0.5, validator=_prob)
        mean: list[float] = attrs.field(factory=lambda: list(IMAGENET_MEAN))
        std: list[float] = attrs.field(factory=lambda: list(IMAGENET_STD))

    def __init__(self, config: "FrequencyMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.num_tokens = env.encoder.num_patches
        if len(config.mean) != len(config.std):
            raise ConfigError("model.masker: mean and std must have the same length")
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_key = env.input_key

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(1, generator=generator)  # (1,): low-pass iff < p_lowpass

    def removed(self, noise: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, 1) uniforms -> (B, 1, H, W) bool, True = removed."""
        c = self.config
        low = removed_frequencies(h, w, c.radius, c.radius2, True, noise.device)  # (H, W)
        lowpass = (noise.view(-1) < c.p_lowpass).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return torch.where(lowpass, low, ~low)

    @torch.no_grad()
    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        x = batch[self.input_key].float()  # (B, C, H, W), normalized
        b, ch, h, w = x.shape
        if noise.shape != (b, 1):
            raise ValueError(f"frequency masker expects noise (B, 1) = ({b}, 1), got {tuple(noise.shape)}")
        removed = self.removed(noise, h, w)  # (B, 1, H, W)
        x01 = x * self.std + self.mean  # back to [0, 1] pixels
        filtered = frequency_filter(x01, removed).clamp(0.0, 1.0)  # (B, C, H, W)
        mask = Mask.none(b, self.num_tokens, x.device)
        mask.corrupted = ((filtered - self.mean) / self.std).to(batch[self.input_key].dtype)
        mask.domain_mask = removed.expand(b, ch, h, w)  # (B, C, H, W), True = removed
        return mask


class FrequencyTarget(nn.Module):
    """The spectrum of the original (normalized) image: (B, C, H, W, 2) real/imaginary pairs.

    Not a per-token target: the ``linear_pixelshuffle`` decoder predicts an image and the
    ``frequency_distance`` loss transforms it. ``dim`` (values per token of the predicted
    image, ph * pw * C) tells the decoder its output width.
    """

    @attrs.define(kw_only=True)
    class Config:
        pass

    def __init__(self, config: "FrequencyTarget.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        _, ph, pw = enc.patch
        self.dim = ph * pw * enc.in_chans
        self.input_key = env.input_key

    @torch.no_grad()
    def forward(self, batch: dict, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        return spectrum(batch[self.input_key])  # (B, C, H, W, 2)


class FrequencyDistance(Loss):
    """MFM's frequency loss (official ``FrequencyLoss``): per frequency
    |F_pred - F_true| ** gamma = sqrt(dRe^2 + dIm^2 + 1e-12) ** gamma, optionally times the focal
    weighting matrix (off in the official recipes), averaged over the removed frequencies
    pooled across the batch and the channels (``mask.domain_mask``); a plain mean when the
    mask carries no frequency mask or ``masked_only`` is false.

    ``pred`` is an image (B, C, H, W); ``target`` is a spectrum (B, C, H, W, 2) from the
    ``frequency`` target (an image (B, C, H, W) is also accepted and transformed).
    """

    @attrs.define(kw_only=True)
    class Config(LossConfig):
        pred: str = "pred"
        target: str = "target"
        gamma: float = 1.0  # loss_gamma
        masked_only: bool = True
        with_matrix: bool = False  # focal frequency weighting
        matrix_gamma: float = 1.0
        log_matrix: bool = False
        batch_matrix: bool = False

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        c = self.config
        pred, target = outputs.get(c.pred), outputs.get(c.target)
        pred_f = spectrum(pred)  # (B, C, H, W, 2)
        target_f = target.float() if target.ndim == 5 else spectrum(target)
        sq = (pred_f - target_f).pow(2).sum(-1)  # (B, C, H, W): dRe^2 + dIm^2
        dist = torch.sqrt(sq + 1e-12) ** c.gamma
        if c.with_matrix:
            dist = dist * self._matrix(sq)
        mask = outputs.mask
        removed = None if mask is None else mask.domain_mask
        if not c.masked_only or removed is None:
            return dist.mean()
        removed = removed.expand_as(dist).to(dist.dtype)
        return (dist * removed).sum() / removed.sum().clamp_min(1.0)

    def _matrix(self, sq: torch.Tensor) -> torch.Tensor:
        """The focal weighting (B, C, H, W) in [0, 1], gradient-free (Focal Frequency Loss)."""
        c = self.config
        m = sq.detach().sqrt() ** c.matrix_gamma
        if c.log_matrix:
            m = torch.log(m + 1.0)
        if c.batch_matrix:
            m = m / m.max()
        else:
            m = m / m.amax(dim=(-2, -1), keepdim=True)
        m = torch.nan_to_num(m, nan=0.0)
        return m.clamp(0.0, 1.0)
