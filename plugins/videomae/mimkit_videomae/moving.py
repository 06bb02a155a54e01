"""``moving_fashion_mnist``: a labelled video set made on the fly from Fashion-MNIST.

There is no labelled real video set offline, so this one is synthetic (say so when quoting it):
clip ``i`` shows garment ``i`` of the Fashion-MNIST split, shrunk to ``garment_size`` pixels on a
black ``img_size`` canvas, moving over ``num_frames`` frames with motion ``i % len(motions)``:
translation right / left / down / up (``shift`` pixels from the first to the last frame) or
rotation clockwise / counter-clockwise (``angle`` degrees). The trajectory's start offset is
drawn from a generator seeded with (seed, i), so the clips are the same every time (a fixed test
set); with ``augment`` the start also jitters from the torch RNG (which mimkit's loader seeds per
item). Labels: ``class`` (the garment, 10), ``motion`` (6) or ``class_motion`` (60).
Items: ``{"video": (C, T, S, S) ImageNet-normalized, "label": int}``.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mimkit.plugin_api import IMAGENET_MEAN, IMAGENET_STD, DataError, FashionMNIST, one_of, seed_for

MOTIONS = ("right", "left", "down", "up", "rotate_cw", "rotate_ccw")


class MovingFashionMNIST(Dataset):
    @attrs.define(kw_only=True)
    class Config:
        root: str | None = None
        split: str = attrs.field(default="train", validator=one_of("train", "test"))
        num_frames: int = 16
        img_size: int = 32
        garment_size: int = 20
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)))
        motions: list[str] = attrs.field(factory=lambda: list(MOTIONS))
        shift: float = 8.0  # pixels travelled by a translation over the clip
        angle: float = 90.0  # degrees turned by a rotation over the clip
        label: str = attrs.field(default="class", validator=one_of("class", "motion", "class_motion"))
        augment: bool = True
        seed: int = 0
        limit: int | None = None

    @classmethod
    def eval_split(cls, config: "MovingFashionMNIST.Config", split: str) -> "MovingFashionMNIST.Config":
        """The whole labelled train or test split (the core's evaluation capability)."""
        return attrs.evolve(config, split=split, limit=None)

    def __init__(self, config: "MovingFashionMNIST.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        for m in config.motions:
            if m not in MOTIONS:
                raise DataError(f"data.motions: unknown motion {m!r}; known: {list(MOTIONS)}")
        if config.num_frames < 2 or config.garment_size > config.img_size:
            raise DataError("moving_fashion_mnist: num_frames >= 2 and garment_size <= img_size")
        fm = FashionMNIST(FashionMNIST.Config(root=config.root, split=split or config.split, limit=config.limit,
                                              augment=False))
        self.images, self.garments = fm.images, fm.labels  # (N, 28, 28) uint8, (N,)
        self.train = config.augment if train is None else train
        c = config.channels
        self.mean = IMAGENET_MEAN if c == 3 else (0.5,)
        self.std = IMAGENET_STD if c == 3 else (0.5,)
        m = len(config.motions)
        motion = torch.arange(len(self.images)) % m
        if config.label == "class":
            self.labels = self.garments.clone()
        elif config.label == "motion":
            self.labels = motion
        else:
            self.labels = self.garments * m + motion
        self.motion = motion
        self.classes = (list(config.motions) if config.label == "motion" else
                        [str(i) for i in range(int(self.labels.max()) + 1)])

    def __len__(self) -> int:
        return len(self.images)

    def render(self, i: int, jitter: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
        """(T, S, S) float in [0, 1]: garment i moving with its motion."""
        c = self.config
        g = torch.Generator().manual_seed(seed_for(c.seed, i))
        s, gs, t = c.img_size, c.garment_size, c.num_frames
        room = (s - gs) / 2.0  # pixels the garment may move from the centre
        motion = c.motions[int(self.motion[i])]
        frac = torch.linspace(-0.5, 0.5, t)  # progress over the clip, centred
        start = (torch.rand(2, generator=g) - 0.5) * 2 * max(0.0, room - c.shift / 2)  # (x, y) offset, pixels
        cx = start[0] + jitter[0]
        cy = start[1] + jitter[1]
        dx = torch.zeros(t) + cx
        dy = torch.zeros(t) + cy
        ang = torch.zeros(t)
        if motion == "right":
            dx = dx + frac * c.shift
        elif motion == "left":
            dx = dx - frac * c.shift
        elif motion == "down":
            dy = dy + frac * c.shift
        elif motion == "up":
            dy = dy - frac * c.shift
        elif motion == "rotate_cw":
            ang = frac * math.radians(c.angle)
        else:
            ang = -frac * math.radians(c.angle)
        # output pixel p (normalized to [-1, 1] on the canvas) samples the garment at R^-1 (p - d) * s/gs
        scale = s / gs
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(t, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * scale, sin * scale
        theta[:, 1, 0], theta[:, 1, 1] = -sin * scale, cos * scale
        tx, ty = -dx * 2 / s, -dy * 2 / s  # translation in normalized canvas units
        theta[:, 0, 2] = (cos * tx + sin * ty) * scale
        theta[:, 1, 2] = (-sin * tx + cos * ty) * scale
        img = self.images[i].float().div(255).view(1, 1, 28, 28).expand(t, 1, 28, 28)
        grid = F.affine_grid(theta, (t, 1, s, s), align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        jitter = (0.0, 0.0)
        if self.train:
            j = (torch.rand(2) - 0.5) * 2.0  # up to +-1 pixel
            jitter = (float(j[0]), float(j[1]))
        frames = self.render(i, jitter)  # (T, S, S)
        c = self.config.channels
        x = frames.unsqueeze(0).expand(c, -1, -1, -1)  # (C, T, S, S)
        mean = torch.tensor(self.mean).view(-1, 1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1, 1)
        return {"video": ((x - mean) / std).contiguous(), "label": int(self.labels[i])}
