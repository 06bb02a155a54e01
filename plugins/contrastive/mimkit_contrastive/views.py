"""The ``two_views`` dataset: two augmented views of each image, for contrastive and
self-distillation methods (CMAE, MACRL, iBOT/AttMask global crops).

Item: {"image": online view (C, S, S), "image_target": second view (C, S, S), "label",
"shift": (2,) long, the target crop's offset from the online crop in pixels (dy, dx)}.

Every crop is cut from the **whole** image, as the official pipelines do: the base dataset's
own transform is replaced by a plain conversion to [0, 1] pixels (no resize, no centre crop).

``pairing: shift`` (CMAE's ShiftPixel, ``cmae_dataset.py``): one RandomResizedCrop+flip
"master" image of side S + max_shift + 1 (256 at S = 224); the online view is the S-crop at
offset (0, 0) (ShiftPixel with pixel = 0), the target view the S-crop at an offset drawn
U{0..max_shift} per axis (CMAE: 31 px at 224 -> round(31 * S / 224), e.g. 4 px at 32).
``pairing: independent``: two independent RandomResizedCrop+flip views (iBOT global crops, MACRL).

``weak`` augmentation is crop + flip only; ``strong`` adds color jitter (0.4, 0.4, 0.4, 0.1,
p 0.8), grayscale (p 0.2) and Gaussian blur (sigma 0.1-2, p 0.5); the blur probability can be
set per view (``online_blur_p``, ``target_blur_p``, ``local_blur_p``) and the target view can be
solarized (``target_solarize_p``), as iBOT's ``DataAugmentationiBOT`` (view 1 blur p 1.0; view 2
blur p 0.1 + solarize p 0.2; local crops blur p 0.5).

``local_crops: L`` adds ``image_local`` (L, C, s, s): L RandomResizedCrop+flip crops of side
``local_size`` and scale ``local_scale`` (iBOT: 10 crops of 96 px, scale 0.05-0.25). On 1-channel images only
brightness and contrast are jittered and grayscale is skipped (both are meaningless there).
All randomness uses torch's global RNG, which ``SeededDataset`` seeds per (seed, epoch, index).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mimkit.plugin_api import IMAGENET_MEAN, IMAGENET_STD, component, one_of, registry


def _prob(_inst: Any, attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be in [0, 1], got {value}")


class TwoViews(torch.utils.data.Dataset):
    """Wraps a base dataset spec (built without its own augmentation) into two views."""

    @attrs.define(kw_only=True)
    class Config:
        base: dict[str, Any] = attrs.field(metadata={"component": "datasets"}, factory=lambda: {"name": "fashion_mnist"})
        pairing: str = attrs.field(default="shift", validator=one_of("shift", "independent"))
        img_size: int | None = attrs.field(default=None, metadata={"geometry": "img_size"})  # default: the base's
        crop_scale: tuple[float, float] = (0.2, 1.0)
        flip: bool = True
        max_shift: int | None = None  # pixels; default round(31 * S / 224)
        online_aug: str = attrs.field(default="weak", validator=one_of("none", "weak", "strong"))
        target_aug: str = attrs.field(default="strong", validator=one_of("none", "weak", "strong"))
        jitter_p: float = attrs.field(default=0.8, validator=_prob)
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
        gray_p: float = attrs.field(default=0.2, validator=_prob)
        blur_p: float = attrs.field(default=0.5, validator=_prob)
        blur_sigma: tuple[float, float] = (0.1, 2.0)
        online_blur_p: float | None = attrs.field(default=None, validator=attrs.validators.optional(_prob))
        target_blur_p: float | None = attrs.field(default=None, validator=attrs.validators.optional(_prob))
        target_solarize_p: float = attrs.field(default=0.0, validator=_prob)
        local_crops: int = attrs.field(default=0, validator=attrs.validators.ge(0))
        local_size: int = 96
        local_scale: tuple[float, float] = (0.05, 0.25)
        local_aug: str = attrs.field(default="strong", validator=one_of("none", "weak", "strong"))
        local_blur_p: float = attrs.field(default=0.5, validator=_prob)

    @classmethod
    def finetune_source(cls, config: "TwoViews.Config") -> dict[str, Any]:
        """What fine-tuning trains on: one ordinary augmented image of the wrapped data (the core's
        ``eval_datasets``), not the pretraining views with their colour jitter and blur."""
        base = dict(config.base)
        if config.img_size is not None:
            base.setdefault("img_size", config.img_size)
        return base

    def __init__(self, config: "TwoViews.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        cls, cfg = component("datasets", config.base, "data.base", registry())
        # The views are cut here from the whole image: the base's own transform (resize +
        # centre crop + normalize when built with train=False) is replaced by a conversion to
        # [0, 1] pixels. A base without a ``transform`` attribute gives its normalized image.
        self.base = cls(cfg, split=split, train=False)
        self.raw = hasattr(self.base, "transform")
        if self.raw:
            self.base.transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        self.mean = tuple(getattr(self.base, "mean", None) or IMAGENET_MEAN)
        self.std = tuple(getattr(self.base, "std", None) or IMAGENET_STD)
        self.train = True if train is None else train
        self.size = config.img_size or int(getattr(getattr(self.base, "config", None), "img_size", 224))
        self.shift = config.max_shift if config.max_shift is not None else int(round(31 * self.size / 224))
        self.classes = getattr(self.base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    # -- pieces -------------------------------------------------------------------------------

    def _unnorm(self, x: torch.Tensor) -> torch.Tensor:  # normalized (C, H, W) -> [0, 1]
        m = torch.tensor(self.mean[: x.shape[0]]).view(-1, 1, 1)
        s = torch.tensor(self.std[: x.shape[0]]).view(-1, 1, 1)
        return (x * s + m).clamp(0, 1)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean[: x.shape[0]]).view(-1, 1, 1)
        s = torch.tensor(self.std[: x.shape[0]]).view(-1, 1, 1)
        return (x - m) / s

    def _rrc(self, x: torch.Tensor, side: int, scale: tuple[float, float] | None = None) -> torch.Tensor:
        """RandomResizedCrop to ``side`` + optional flip: (C, H, W) -> (C, side, side)."""
        scale = self.config.crop_scale if scale is None else scale
        i, j, h, w = v2.RandomResizedCrop.get_params(x, scale=list(scale), ratio=[3 / 4, 4 / 3])
        x = TF.resized_crop(x, i, j, h, w, [side, side], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        if self.config.flip and torch.rand(()) < 0.5:
            x = TF.horizontal_flip(x)
        return x.clamp(0, 1)

    def _strong(self, x: torch.Tensor, blur_p: float | None = None, solarize_p: float = 0.0) -> torch.Tensor:
        """Color jitter (random order, as torchvision), grayscale, blur and solarization on [0, 1] pixels."""
        c = self.config
        blur_p = c.blur_p if blur_p is None else blur_p
        gray = x.shape[0] == 1
        if torch.rand(()) < c.jitter_p:
            b, ct, s, h = c.jitter
            ops = [("b", b), ("c", ct)] + ([] if gray else [("s", s), ("h", h)])
            for idx in torch.randperm(len(ops)).tolist():
                kind, amount = ops[idx]
                if amount <= 0:
                    continue
                if kind == "h":
                    x = TF.adjust_hue(x, float(torch.empty(()).uniform_(-amount, amount)))
                else:
                    f = float(torch.empty(()).uniform_(max(0.0, 1 - amount), 1 + amount))
                    fn = {"b": TF.adjust_brightness, "c": TF.adjust_contrast, "s": TF.adjust_saturation}[kind]
                    x = fn(x, f)
        if not gray and torch.rand(()) < c.gray_p:
            x = TF.rgb_to_grayscale(x, num_output_channels=x.shape[0])
        if torch.rand(()) < blur_p:
            sigma = float(torch.empty(()).uniform_(*c.blur_sigma))
            k = max(3, int(2 * round(3 * sigma) + 1))  # odd kernel covering +-3 sigma
            k = min(k, 2 * (x.shape[-1] // 2) - 1)
            x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
        if solarize_p > 0 and torch.rand(()) < solarize_p:
            x = torch.where(x >= 0.5, 1.0 - x, x)  # PIL's ImageOps.solarize at threshold 128
        return x.clamp(0, 1)

    def _augment(self, x: torch.Tensor, how: str, blur_p: float | None = None, solarize_p: float = 0.0) -> torch.Tensor:
        return self._strong(x, blur_p, solarize_p) if how == "strong" and self.train else x

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        x = item.pop("image")
        x = x.float().clamp(0, 1) if self.raw else self._unnorm(x)  # (C, H, W) in [0, 1], whole image
        s, m = self.size, self.shift
        c = self.config
        if not self.train:  # evaluation: resize the short side, centre crop
            x = TF.center_crop(TF.resize(x, [s], interpolation=v2.InterpolationMode.BICUBIC, antialias=True), [s, s])
            a = b = x.clamp(0, 1)
            shift = torch.zeros(2, dtype=torch.long)
        elif c.pairing == "shift":
            master = self._rrc(x, s + m + 1)  # (C, S + m + 1, S + m + 1): 256 at S = 224
            ty, tx = (int(v) for v in torch.randint(0, m + 1, (2,)))
            a = master[:, :s, :s]  # online view: offset (0, 0)
            b = master[:, ty : ty + s, tx : tx + s]
            shift = torch.tensor([ty, tx])
        else:
            a, b = self._rrc(x, s), self._rrc(x, s)
            shift = torch.zeros(2, dtype=torch.long)
        item["image"] = self._norm(self._augment(a, c.online_aug, c.online_blur_p))
        item["image_target"] = self._norm(self._augment(b, c.target_aug, c.target_blur_p, c.target_solarize_p))
        item["shift"] = shift
        if c.local_crops and self.train:
            item["image_local"] = torch.stack([
                self._norm(self._augment(self._rrc(x, c.local_size, c.local_scale), c.local_aug, c.local_blur_p))
                for _ in range(c.local_crops)])  # (L, C, s, s)
        return item
