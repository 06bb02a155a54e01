"""Corrupted test sets: ``fashion_mnist_c`` and the generic ``corrupted`` wrapper.

Image ``i`` of corruption ``c`` at severity ``s`` is always the same: its randomness comes
from ``seed_for(seed, index of c, s, i)``. Fashion-MNIST-C corrupts the raw 28x28 images (then
quantizes to uint8, as the published -C sets are stored) before the usual pad-to-32 and
normalization; ``corrupted`` undoes the base dataset's normalization, corrupts, re-normalizes.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch.utils.data import Dataset

from mimkit.plugin_api import ConfigError, FashionMNIST, FieldError, component, registry, seed_for

from .corruptions import CORRUPTIONS, corrupt
from .names import check_corruption, check_severity


def image_seeds(seed: int, corruption: str, severity: int, indices) -> list[int]:
    k = list(CORRUPTIONS).index(corruption)
    return [seed_for(seed, k, severity, int(i)) for i in indices]


def _checked_field(check_value, default):
    """An attrs field validated by ``check_value(value, name)`` (which raises ConfigError), its
    message re-raised as a FieldError so that the config error names the whole key."""
    def check(_inst, attr, value):
        try:
            check_value(value, attr.name)
        except ConfigError as exc:
            raise FieldError(attr.name, str(exc).split(": ", 1)[1]) from None

    return attrs.field(default=default, validator=check)


def _corruption_field(default: str = "gaussian_noise"):
    return _checked_field(check_corruption, default)


def _severity_field(default: int = 3):
    return _checked_field(check_severity, default)


class FashionMNISTC(Dataset):
    """Fashion-MNIST test images under one of the 15 corruptions at one severity (1-5)."""

    @attrs.define(kw_only=True)
    class Config:
        root: str | None = None
        split: str = "test"
        corruption: str = _corruption_field()
        severity: int = _severity_field()
        img_size: int = 32
        channels: int = attrs.field(default=1, validator=attrs.validators.in_((1, 3)))
        limit: int | None = None
        seed: int = 0
        chunk: int = 1000  # images corrupted per vectorized call

    def __init__(self, config: "FashionMNISTC.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        base_cfg = FashionMNIST.Config(root=config.root, split=split or config.split, img_size=config.img_size,
                                       channels=config.channels, augment=False, limit=config.limit)
        self.base = FashionMNIST(base_cfg, train=False)
        self.labels, self.classes = self.base.labels, self.base.classes
        self.mean, self.std = self.base.mean, self.base.std
        raw = self.base.images.float().div(255).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]
        out = []
        for s in range(0, len(raw), config.chunk):
            part = raw[s : s + config.chunk]
            seeds = image_seeds(config.seed, config.corruption, config.severity, range(s, s + len(part)))
            out.append(corrupt(part, config.corruption, config.severity, seeds))
        self.images = (torch.cat(out) * 255).round().clamp(0, 255).to(torch.uint8)[:, 0]  # (N, 28, 28)
        self.base.images = self.images  # the base pads, expands and normalizes them

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[i]


class Corrupted(Dataset):
    """Any registered image dataset (built un-augmented) under one corruption and severity."""

    @attrs.define(kw_only=True)
    class Config:
        base: dict[str, Any] = attrs.field(factory=lambda: {"name": "fashion_mnist", "split": "test"})
        corruption: str = _corruption_field()
        severity: int = _severity_field()
        seed: int = 0

    def __init__(self, config: "Corrupted.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        cls, cfg = component("datasets", config.base, "data.base", registry())
        self.base = cls(cfg, split=split, train=False)
        self.mean = tuple(getattr(self.base, "mean", (0.0,)))
        self.std = tuple(getattr(self.base, "std", (1.0,)))
        self.classes = getattr(self.base, "classes", None)
        if hasattr(self.base, "labels"):
            self.labels = self.base.labels

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        x = item["image"]  # (C, H, W), normalized
        c = x.shape[0]
        m = torch.tensor((self.mean * c)[:c]).view(c, 1, 1)
        s = torch.tensor((self.std * c)[:c]).view(c, 1, 1)
        raw = (x * s + m).clamp(0, 1).unsqueeze(0)
        seeds = image_seeds(self.config.seed, self.config.corruption, self.config.severity, [i])
        y = corrupt(raw, self.config.corruption, self.config.severity, seeds)[0]
        item["image"] = (y - m) / s
        return item
