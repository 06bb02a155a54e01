"""The audio toolkit: fbank against Kaldi's published formulas on speech, audio files, the
spoken-digit set, roll/magnitude augmentation, the feature k-NN."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mimkit.plugin_api import DataError
from mimkit_audio import AudioFeatures, AudioFolder, SpokenDigits, fbank, knn_scores, read_audio
from mimkit_audio.data import synthesize

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh)")


def kaldi_reference(wav: np.ndarray, sr: int = 16000, bins: int = 128) -> np.ndarray:
    """Kaldi's fbank written out from its definitions, in float64 loops (no shared code)."""
    win, shift, nfft = int(0.025 * sr), int(0.010 * sr), 512
    m = 1 + (len(wav) - win) // shift
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (bins + 1)
    banks = np.zeros((bins, nfft // 2))
    for b in range(bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for i in range(nfft // 2):
            f = mel(i * sr / nfft)
            if left < f < right:
                banks[b, i] = (f - left) / (center - left) if f <= center else (right - f) / (right - center)
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / (win - 1)) for n in range(win)])
    out = np.zeros((m, bins))
    for t in range(m):
        frame = wav[t * shift : t * shift + win].astype(np.float64)
        frame = frame - frame.mean()  # DC removal
        emph = frame.copy()
        for n in range(win - 1, 0, -1):
            emph[n] = frame[n] - 0.97 * frame[n - 1]
        emph[0] = frame[0] - 0.97 * frame[0]
        buf = np.zeros(nfft)
        buf[:win] = emph * window
        power = np.abs(np.fft.rfft(buf)) ** 2
        energies = banks @ power[: nfft // 2]
        out[t] = np.log(np.maximum(energies, np.finfo(np.float32).eps))  # Kaldi's energy floor: float eps
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite not installed (scripts/setup.sh)")
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    synthesize("masked autoencoders listen", "slt", 1.0, 120.0, path)
    return path


def test_fbank_matches_kaldi_formulas_on_speech(speech):
    wav = read_audio(speech)
    assert wav.numel() > 16000  # more than a second of speech
    wav = wav - wav.mean()
    ours = fbank(wav).double().numpy()
    ref = kaldi_reference(wav.double().numpy())
    assert ours.shape == ref.shape == (1 + (wav.numel() - 400) // 160, 128)
    loud = ref > -10  # float32 vs float64 rounding only matters near the floor
    assert loud.mean() > 0.5
    np.testing.assert_allclose(ours[loud], ref[loud], atol=2e-3, rtol=0)
    assert np.abs(ours - ref).mean() < 1e-3


def test_fbank_edge_cases():
    assert fbank(torch.zeros(399)).shape == (0, 128)  # shorter than one frame
    silent = fbank(torch.zeros(16000))
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))
    with pytest.raises(ValueError, match="mono"):
        fbank(torch.zeros(2, 16000))


def _tone(freq: float, sr: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def test_audio_folder_formats_resampling_and_corrupt_files(tmp_path):
    root = tmp_path / "sounds"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    sf.write(root / "low" / "a.wav", _tone(300, 8000), 8000)  # resampled 8 -> 16 kHz
    sf.write(root / "low" / "b.flac", _tone(300, 16000, channels=2), 16000)  # stereo -> mono
    sf.write(root / "high" / "c.ogg", _tone(3000, 44100), 44100)
    wav = read_audio(root / "low" / "a.wav")
    assert wav.numel() == 8000  # 0.5 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / wav.numel() - 300) < 3
    cfg = AudioFolder.Config(root=str(root), target_length=64)
    ds = AudioFolder(cfg)
    assert ds.classes == ["high", "low"] and [k for _, k in ds.samples] == [0, 1, 1]
    feats = [ds[i]["audio"] for i in range(3)]
    assert all(f.shape == (1, 64, 128) for f in feats)
    # the 3 kHz tone's energy sits in higher mel bins than the 300 Hz one
    assert feats[0][0, 10].argmax() > feats[1][0, 10].argmax() + 30

    (root / "high" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    ds = AudioFolder(cfg)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.name == "broken.wav"][0]
    with pytest.raises(DataError, match="broken.wav"):
        ds[bad]
    skipping = AudioFolder(AudioFolder.Config(root=str(root), target_length=64, bad_data="skip"))
    assert skipping[bad] == {"_bad": str(root / "high" / "broken.wav")}
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "x.wav", _tone(500, 16000), 16000)
    assert AudioFolder(AudioFolder.Config(root=str(flat))).samples[0][1] == -1
    with pytest.raises(DataError, match="not found"):
        AudioFolder(AudioFolder.Config(root=str(tmp_path / "nope")))


def test_roll_mag_rescales_but_never_rolls_mono_like_the_official_code():
    wav = torch.from_numpy(_tone(440, 16000, 1.0)) * torch.linspace(0.1, 1, 16000)  # not shift-invariant
    plain = AudioFeatures(target_length=100, roll_mag=False).waveform_to_input(wav, train=True)
    torch.manual_seed(3)
    aug = AudioFeatures(target_length=100, roll_mag=True).waveform_to_input(wav, train=True)
    torch.manual_seed(3)
    scale = float(torch.distributions.Beta(10.0, 10.0).sample()) + 0.5
    # x -> s x multiplies the power by s^2: the log-mel moves by 2 ln s (normalized by 2 std), everywhere
    real = slice(0, 98)  # 1 s = 98 whole frames; the rest is padding
    shift = (aug - plain)[:, real][plain[:, real] > -1]
    expected = 2 * math.log(scale) / (2 * AudioFeatures().std)
    assert torch.allclose(shift, torch.full_like(shift, expected), atol=1e-4)
    torch.manual_seed(3)
    rolled = AudioFeatures(target_length=100, roll_mag=True, roll_mono=True).waveform_to_input(wav, train=True)
    assert (rolled - plain).std() > 0.05  # really rolled in time
    assert torch.equal(AudioFeatures(target_length=100, roll_mag=True).waveform_to_input(wav, train=False), plain)


@needs_flite
def test_spoken_digits_synthesized_once_with_disjoint_renditions(tmp_path):
    cfg = dict(root=str(tmp_path), words=["two", "seven"], voices=["slt", "kal"], stretches=[1.0], pitches=[100.0, 150.0],
               test_every=2, target_length=128)
    train = SpokenDigits(SpokenDigits.Config(**cfg), split="train")
    test = SpokenDigits(SpokenDigits.Config(**cfg), split="test")
    assert len(train) == len(test) == 4 and train.labels == [0, 1, 0, 1]
    assert not {p.parent.name for p, _ in train.samples} & {p.parent.name for p, _ in test.samples}
    first = train.samples[0][0]
    mtime = first.stat().st_mtime_ns
    SpokenDigits(SpokenDigits.Config(**cfg), split="train")  # cached: not synthesized again
    assert first.stat().st_mtime_ns == mtime
    item = train[0]
    assert item["audio"].shape == (1, 128, 128) and item["label"] == 0
    with pytest.raises(DataError, match="unknown flite voice"):
        SpokenDigits(SpokenDigits.Config(**{**cfg, "voices": ["nobody"]}))


def test_knn_scores_weighted_votes():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    votes = knn_scores(train, labels, torch.tensor([[0.2, 1.0]]), 2, k=3, temperature=0.1)
    sims = torch.nn.functional.normalize(train, dim=1) @ torch.nn.functional.normalize(torch.tensor([0.2, 1.0]), dim=0)
    assert torch.allclose(votes[0], torch.stack([(sims[:2] / 0.1).exp().sum(), (sims[2] / 0.1).exp()]))
    assert votes.argmax(1).item() == 1


def test_knn_centering_ignores_a_shared_offset():
    """``center``: k-NN on features minus the mean training feature - exactly the scores of features
    centred by hand, and unchanged when every feature gets the same offset (a shared component such
    as fixed position codes or padding patches), which moves the plain cosine k-NN."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    tr, te = torch.randn(200, 16, generator=g), torch.randn(100, 16, generator=g)
    tr[:, 0] += y.float()
    te[:, 0] += (torch.arange(100) % 4).float()
    mu = tr.mean(0, keepdim=True)
    centred = knn_scores(tr, y, te, 4, center=True)
    assert torch.equal(centred, knn_scores(tr - mu, y, te - mu, 4))
    offset = 5 * torch.randn(1, 16, generator=g)
    torch.testing.assert_close(knn_scores(tr + offset, y, te + offset, 4, center=True), centred, atol=1e-4, rtol=1e-4)
    plain, moved = knn_scores(tr, y, te, 4), knn_scores(tr + offset, y, te + offset, 4)
    assert not torch.equal(plain.argmax(1), moved.argmax(1))
