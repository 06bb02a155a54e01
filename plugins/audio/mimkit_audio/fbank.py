"""Kaldi-compatible log-mel filterbank in plain torch.

Matches ``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``, the
call of AST and Audio-MAE (no torchaudio release matches our torch, so it is re-written here
from Kaldi's definitions):

    frames of 25 ms every 10 ms, only whole frames ("snip edges")   (m, 400) at 16 kHz
    -> remove each frame's DC offset -> pre-emphasis x[n] - 0.97 x[n-1] (x[-1] := x[0])
    -> window (symmetric Hann; "povey" = Hann^0.85) -> zero-pad to a power of two (512)
    -> power spectrum |rfft|^2 -> triangular mel filters on the mel scale 1127 ln(1 + f/700),
       between 20 Hz and Nyquist, applied to the first 256 FFT bins
    -> log(max(energy, float32 eps))                                 (m, num_mel_bins)
"""
from __future__ import annotations

import math

import torch

#: AudioSet's fbank statistics used by AST and Audio-MAE (mean, std).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
WINDOWS = ("hanning", "povey", "hamming", "rectangular")


def mel_scale(freq: torch.Tensor | float):
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters: (num_bins, padded_window // 2) weights over FFT bins
    0 .. padded_window/2 - 1 (the Nyquist bin gets no weight, as in Kaldi)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel filters need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high_freq}")
    fft_bin_width = sample_rate / padded_window
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)  # (num_bins, 1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    mel = mel_scale(fft_bin_width * torch.arange(padded_window // 2, dtype=torch.float32)).unsqueeze(0)  # (1, F)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)  # (num_bins, F)


def window_function(kind: str, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n = torch.arange(size, dtype=torch.float64)
    if kind == "hanning":
        w = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (size - 1))
    elif kind == "povey":
        w = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (size - 1))) ** 0.85
    elif kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (size - 1))
    elif kind == "rectangular":
        w = torch.ones(size, dtype=torch.float64)
    else:
        raise ValueError(f"window_type must be one of {list(WINDOWS)}, got {kind!r}")
    return w.to(dtype)


def fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, window_type: str = "hanning", preemphasis: float = 0.97,
          remove_dc_offset: bool = True, low_freq: float = 20.0, high_freq: float = 0.0,
          round_to_power_of_two: bool = True) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform (L,) or (1, L) in [-1, 1]: (num_frames, num_mel_bins),
    float32. A waveform shorter than one frame gives zero frames."""
    if waveform.ndim == 2:
        if waveform.shape[0] != 1:
            raise ValueError(f"fbank expects a mono waveform (L,) or (1, L), got {tuple(waveform.shape)}")
        waveform = waveform[0]
    x = waveform.to(torch.float32)
    win = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    padded = 1 << (win - 1).bit_length() if round_to_power_of_two else win
    if x.numel() < win:
        return torch.zeros(0, num_mel_bins)
    frames = x.unfold(0, win, shift)  # (m, win), m = 1 + (L - win) // shift
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis != 0.0:
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0] (replicate)
        frames = frames - preemphasis * prev
    frames = frames * window_function(window_type, win)
    if padded > win:
        frames = torch.nn.functional.pad(frames, (0, padded - win))
    power = torch.fft.rfft(frames).abs().pow(2)  # (m, padded/2 + 1)
    banks = mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq)  # (bins, padded/2)
    energies = power[:, : padded // 2] @ banks.t()  # (m, bins)
    return torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps))


def pad_or_cut(features: torch.Tensor, target_length: int) -> torch.Tensor:
    """(m, F) -> (target_length, F): zero rows appended at the end, or the first rows kept
    (the AST / Audio-MAE loader)."""
    m = features.shape[0]
    if m < target_length:
        return torch.nn.functional.pad(features, (0, 0, 0, target_length - m))
    return features[:target_length]
