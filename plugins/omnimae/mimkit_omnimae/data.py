"""The ``mixture`` data source: several datasets drawn from in one run (OmniMAE's images + videos).

Item ``i`` of an epoch picks its source with probability ``weights`` (default: proportional to
the sources' sizes) and an item of that source uniformly, both from the torch RNG - which the
core's seeded loader sets from (seed, epoch, i) before every item. So an item (its source, its
index, its augmentation and its mask noise) is a pure function of (seed, epoch, i): the same on
any number of processes, and a resumed run continues exactly. The epoch has ``length`` items
(default: the sum of the sources' sizes).

With ``video_frames`` set, every item becomes ``{"video": (C, video_frames, H, W), "frames": n,
"label", "source"}``: an image is first made a ``image_frames``-frame clip by repeating it
(OmniMAE's ``PadIm2Video(2, repeat)``), then zero-padded to ``video_frames`` so that images and
videos stack in one batch; ``frames`` keeps the real count (the model crops the padding off).

This is generic (nothing in it is OmniMAE's): a candidate for the core.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch.utils.data import Dataset

from mimkit.plugin_api import ConfigError, DataError, component, registry


class Mixture(Dataset):
    @attrs.define(kw_only=True)
    class Config:
        datasets: list[dict[str, Any]]
        weights: list[float] | None = None
        length: int | None = None
        video_frames: int | None = None
        image_frames: int = 2
        limit: int | None = None  # passed on to every source that has the option (tests)

    def __init__(self, config: "Mixture.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        if not config.datasets:
            raise ConfigError("data.datasets: at least one dataset")
        reg = registry()
        self.sources = []
        for k, spec in enumerate(config.datasets):
            spec = dict(spec)
            if spec.get("name") == "mixture":
                raise ConfigError(f"data.datasets.{k}: a mixture inside a mixture is not supported")
            if config.limit is not None:
                cls = reg.get("datasets", spec.get("name"), where=f"data.datasets.{k}")
                if "limit" in attrs.fields_dict(cls.Config):
                    spec["limit"] = config.limit
            cls, cfg = component("datasets", spec, f"data.datasets.{k}", reg)
            self.sources.append(cls(cfg, split=split, train=train) if split else cls(cfg, train=train))
        sizes = [len(s) for s in self.sources]
        if min(sizes) == 0:
            raise DataError(f"data.datasets: empty source(s): sizes {sizes}")
        w = config.weights if config.weights is not None else [float(n) for n in sizes]
        if len(w) != len(sizes) or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"data.weights: {len(sizes)} non-negative values with a positive sum, got {w}")
        self.probs = torch.tensor(w, dtype=torch.float64) / sum(w)
        self.cum = torch.cumsum(self.probs, 0)
        self.length = config.length or sum(sizes)
        if config.limit is not None:
            self.length = min(self.length, config.limit * len(sizes))
        first = self.sources[0]
        self.mean = getattr(first, "mean", (0.0,))
        self.std = getattr(first, "std", (1.0,))

    def __len__(self) -> int:
        return self.length

    def pick(self) -> tuple[int, int]:
        """(source, index) for the next item, from the torch RNG (seeded per item by the loader)."""
        u = float(torch.rand((), dtype=torch.float64))
        k = min(int(torch.searchsorted(self.cum, torch.tensor(u, dtype=torch.float64), right=True)), len(self.sources) - 1)
        j = int(torch.randint(0, len(self.sources[k]), ()))
        return k, j

    def as_video(self, item: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        if "video" in item:
            x = item["video"]
        elif "image" in item:
            x = item["image"].unsqueeze(1).repeat(1, c.image_frames, 1, 1)  # (C, image_frames, H, W)
        else:
            raise DataError(f"mixture: an item has neither 'image' nor 'video' (keys {sorted(item)})")
        n = x.shape[1]
        if n > c.video_frames:
            raise DataError(f"mixture: a clip of {n} frames is longer than video_frames {c.video_frames}")
        if n < c.video_frames:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, c.video_frames - n))
        out = {k: v for k, v in item.items() if k not in ("image", "video")}
        out.update(video=x, frames=n)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, j = self.pick()
        item = dict(self.sources[k][j])
        if "_bad" in item:
            return item
        item["source"] = k
        return self.as_video(item) if self.config.video_frames else item
