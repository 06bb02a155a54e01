"""Audio data sources: ``audio_folder`` (wav/flac/ogg files) and ``spoken_digits`` (a labelled
speech set synthesized offline with Debian's ``flite``, generated once and cached).

Items are ``{"audio": (1, target_length, num_mel_bins), "label": int}``: the Kaldi log-mel
filterbank of the first ``target_length`` frames (zero-padded), normalized as AST / Audio-MAE do,
``(fbank - mean) / (2 * std)`` (``std_scale: 2``). Waveforms are read with ``soundfile``, mixed
to mono, resampled to 16 kHz (polyphase, scipy) and their mean is removed before the fbank, as
in the official loader. Optional Audio-MAE pretraining augmentation ``roll_mag``: the waveform is
scaled by Beta(10, 10) + 0.5 and, only with ``roll_mono: true``, rolled by a random offset (the
official code rolls along the channel axis of a (1, L) waveform, so it never rolls mono audio).
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from math import gcd
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from mimkit.plugin_api import DataError, one_of

from .fbank import AUDIOSET_MEAN, AUDIOSET_STD, WINDOWS, fbank, pad_or_cut

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FLITE_VOICES = ("kal16", "awb", "rms", "slt", "kal")


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Decode a file to a mono float32 waveform (L,) at ``sample_rate``; failures name the file."""
    try:
        import soundfile as sf
    except ImportError:
        raise DataError("reading audio needs soundfile: `pip install soundfile`") from None
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (L, channels)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise DataError(f"cannot read audio {path}: {exc}") from None
    if data.shape[0] == 0:
        raise DataError(f"cannot read audio {path}: no samples")
    wav = data.mean(axis=1)
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    if not np.isfinite(wav).all():
        raise DataError(f"cannot read audio {path}: non-finite samples")
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


def resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Polyphase resampling (scipy's ``resample_poly``, Kaiser-windowed FIR)."""
    from scipy.signal import resample_poly

    g = gcd(int(orig), int(new))
    return resample_poly(wav, new // g, orig // g).astype(np.float32)


@attrs.define(kw_only=True)
class AudioFeatures:
    """How a waveform becomes the model's input (shared by every audio source)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024  # frames of 10 ms: 1024 for AudioSet, 512 ESC-50, 128 Speech Commands
    window_type: str = attrs.field(default="hanning", validator=one_of(*WINDOWS))
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    std_scale: float = 2.0  # the official loaders divide by 2 * std
    roll_mag: bool = False  # Audio-MAE's roll_mag_aug (pretraining)
    roll_mono: bool = False  # also roll mono audio (the official code never does)
    augment: bool = True  # augmentation on (when roll_mag) for the training split

    def waveform_to_input(self, wav: torch.Tensor, train: bool) -> torch.Tensor:
        """(L,) -> (1, target_length, num_mel_bins), normalized."""
        wav = wav - wav.mean()
        if train and self.roll_mag:
            if self.roll_mono:
                wav = torch.roll(wav, int(torch.randint(0, wav.numel(), ())))
            wav = wav * (torch.distributions.Beta(10.0, 10.0).sample() + 0.5)
        feats = fbank(wav, self.sample_rate, self.num_mel_bins, window_type=self.window_type)
        feats = pad_or_cut(feats, self.target_length)
        return ((feats - self.mean) / (self.std * self.std_scale)).unsqueeze(0)


class _AudioDataset(Dataset):
    samples: list[tuple[Path, int]]
    classes: list[str]

    def _setup(self, config: Any, train: bool | None) -> None:
        self.config = config
        self.train = config.augment if train is None else train
        self.mean, self.std = (0.0,), (1.0,)  # items are already normalized fbanks
        self._cache: dict[int, torch.Tensor] = {}
        if config.limit is not None:
            self.samples = self.samples[: config.limit]
        self.labels = [k for _, k in self.samples]
        if not self.samples:
            raise DataError(f"{type(self).__name__}: no audio files found")

    def __len__(self) -> int:
        return len(self.samples)

    def waveform(self, i: int) -> torch.Tensor:
        wav = self._cache.get(i)
        if wav is None:
            wav = read_audio(self.samples[i][0], self.config.sample_rate)
            if self.config.cache:
                self._cache[i] = wav
        return wav

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        try:
            wav = self.waveform(i)
        except DataError:
            if self.config.bad_data == "skip":
                return {"_bad": str(path)}
            raise
        return {"audio": self.config.waveform_to_input(wav, self.train), "label": label}


class AudioFolder(_AudioDataset):
    """Audio files (wav/flac/ogg) in ``root``: class subfolders give labels (sorted folder
    names), a flat folder gives label -1. A file that cannot be decoded raises a ``DataError``
    naming it, or with ``bad_data: skip`` is dropped from its batch and counted."""

    @attrs.define(kw_only=True)
    class Config(AudioFeatures):
        root: str
        bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
        cache: bool = False  # keep decoded waveforms in memory
        limit: int | None = None

    def __init__(self, config: "AudioFolder.Config", split: str | None = None, train: bool | None = None):
        root = Path(config.root)
        if not root.is_dir():
            raise DataError(f"audio folder not found: {root}")
        is_audio = lambda p: p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")  # noqa: E731
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        if subdirs:
            self.classes = [d.name for d in subdirs]
            self.samples = [(p, k) for k, d in enumerate(subdirs) for p in sorted(d.rglob("*")) if is_audio(p)]
        else:
            self.classes = []
            self.samples = [(p, -1) for p in sorted(root.iterdir()) if is_audio(p)]
        self._setup(config, train)


def default_cache() -> Path:
    base = os.environ.get("MIMKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mimkit")
    return Path(base) / "spoken_digits"


def synthesize(word: str, voice: str, stretch: float, pitch: float, path: Path) -> None:
    """One utterance with flite (written to a temporary file, then renamed: never half-written)."""
    flite = shutil.which("flite")
    if flite is None:
        raise DataError("the spoken_digits source needs Debian's flite: `apt-get install flite` "
                        "(scripts/setup.sh installs it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(fd)
    cmd = [flite, "-voice", voice, "-t", word, "--setf", f"duration_stretch={stretch}",
           "--setf", f"int_f0_target_mean={pitch}", "-o", tmp]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        os.replace(tmp, path)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"flite failed for {word!r} (voice {voice}): {exc}") from None


class SpokenDigits(_AudioDataset):
    """Spoken words (the digits by default) synthesized offline with flite across voices,
    speaking rates (``duration_stretch``) and pitches (``int_f0_target_mean``); label = the word.

    The (voice, stretch, pitch) combinations are enumerated in order; every ``test_every``-th
    one is the test split, so test clips are renditions (voice x rate x pitch) never seen in
    training. Files are synthesized on first use into ``root`` (default
    ``$MIMKIT_CACHE/spoken_digits`` or ``~/.cache/mimkit/spoken_digits``) and reused after.
    """

    @attrs.define(kw_only=True)
    class Config(AudioFeatures):
        root: str | None = None
        split: str = attrs.field(default="train", validator=one_of("train", "test", "all"))
        words: list[str] = attrs.field(factory=lambda: list(DIGITS))
        voices: list[str] = attrs.field(factory=lambda: list(FLITE_VOICES))
        stretches: list[float] = attrs.field(factory=lambda: [0.8, 1.0, 1.25])
        pitches: list[float] = attrs.field(factory=lambda: [90.0, 120.0, 170.0])
        test_every: int = 3
        bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
        cache: bool = True
        limit: int | None = None

    @classmethod
    def eval_split(cls, config: "SpokenDigits.Config", split: str) -> "SpokenDigits.Config":
        """The whole labelled train or test split (the core's evaluation capability)."""
        return attrs.evolve(config, split=split, limit=None)

    def __init__(self, config: "SpokenDigits.Config", split: str | None = None, train: bool | None = None):
        split = split or config.split
        for v in config.voices:
            if v not in FLITE_VOICES:
                raise DataError(f"data.voices: unknown flite voice {v!r}; known: {list(FLITE_VOICES)}")
        if config.test_every < 2:
            raise DataError(f"data.test_every must be >= 2, got {config.test_every}")
        root = Path(config.root) if config.root else default_cache()
        combos = list(itertools.product(config.voices, config.stretches, config.pitches))
        self.classes = list(config.words)
        self.samples = []
        for c, (voice, stretch, pitch) in enumerate(combos):
            is_test = c % config.test_every == config.test_every - 1
            if split != "all" and is_test != (split == "test"):
                continue
            for k, word in enumerate(config.words):
                self.samples.append((root / f"{voice}_s{stretch:g}_p{pitch:g}" / f"{word}.wav", k))
        if config.limit is not None:  # synthesize only what is used
            self.samples = self.samples[: config.limit]
        for path, k in self.samples:
            if not path.is_file():
                voice, s, p = path.parent.name.split("_")
                synthesize(config.words[k], voice, float(s[1:]), float(p[1:]), path)
        self._setup(config, train)
