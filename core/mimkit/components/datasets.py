"""The built-in data sources: ``fashion_mnist`` (the Debian package's IDX files) and
``image_folder`` (class subfolders or a flat folder of images). Each declares its labelled
evaluation splits (``eval_split``)."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..data import (
    DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN,
    IMAGE_SUFFIXES, IMAGENET_STD, _augment,
)
from ..errors import DataError
from ..schema import one_of, positive


def _read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


class FashionMNIST(Dataset):
    """Fashion-MNIST (70k 28x28 grayscale clothes, 10 classes), padded to 32x32 by default.

    Read from Debian's ``dataset-fashion-mnist`` or from torchvision's ``FashionMNIST/raw``
    layout under ``root``; nothing is downloaded.
    """

    @attrs.define(kw_only=True)
    class Config:
        root: str | None = None
        split: str = attrs.field(default="train", validator=one_of("train", "test"))
        img_size: int = attrs.field(default=32, validator=positive, metadata={"geometry": "img_size"})
        channels: int = attrs.field(default=1, validator=attrs.validators.in_((1, 3)), metadata={"geometry": "channels"})
        augment: bool = True
        crop_scale: tuple[float, float] = (0.2, 1.0)
        flip: bool = True
        limit: int | None = None  # the first N samples (tests, quick runs)

    @classmethod
    def eval_split(cls, config: "FashionMNIST.Config", split: str) -> "FashionMNIST.Config":
        """The whole labelled ``split`` ("train": 60,000 images, "test": 10,000) for evaluation."""
        return attrs.evolve(config, split=split, limit=None)

    def __init__(self, config: "FashionMNIST.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        split = split or config.split
        prefix = "train" if split == "train" else "t10k"
        folder = self._find(config.root)
        images = _read_idx(self._file(folder, f"{prefix}-images-idx3-ubyte"), 16).reshape(-1, 28, 28)
        labels = _read_idx(self._file(folder, f"{prefix}-labels-idx1-ubyte"), 8).astype(np.int64)
        if config.limit is not None:
            images, labels = images[: config.limit], labels[: config.limit]
        self.images = torch.from_numpy(images.copy())  # (N, 28, 28) uint8
        self.labels = torch.from_numpy(labels.copy())
        self.classes = FASHION_MNIST_CLASSES
        train = config.augment if train is None else train
        mean, std = FASHION_MNIST_MEAN * config.channels, FASHION_MNIST_STD * config.channels
        self.mean, self.std = mean, std
        self.transform = _augment(config.img_size, config.crop_scale, config.flip, mean, std, train)
        self.transform_train = train

    @staticmethod
    def _find(root: str | None) -> Path:
        candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEBIAN_FASHION_MNIST]
        for c in candidates:
            if c.is_dir() and any(c.glob("*-images-idx3-ubyte*")):
                return c
        hint = "install it with `apt-get install dataset-fashion-mnist` (the set-up script does)"
        if root and Path(root).is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in Path(root).rglob("*")):
            hint = ("that folder holds image files: train on them with data.name=image_folder "
                    "(e.g. --set data.name=image_folder --set data.root=... --set data.img_size=32)")
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}; {hint}")

    @staticmethod
    def _file(folder: Path, stem: str) -> Path:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise DataError(f"Fashion-MNIST file {stem}[.gz] missing in {folder}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = self.images[i].unsqueeze(0)  # (1, 28, 28) uint8
        pad = max(0, (self.config.img_size - 28) // 2)
        img = torch.nn.functional.pad(img, (pad, pad, pad, pad))  # (1, 32, 32) for img_size 32
        if self.config.channels == 3:
            img = img.expand(3, -1, -1)
        return {"image": self.transform(img), "label": int(self.labels[i])}

    def get_batch(self, indices: list[int], seeds: list[int]) -> dict[str, Any]:
        """The batched fast path (:mod:`mimkit.batchaug`): the same augmentation as ``__getitem__``
        for a whole batch, each sample's crop and flip drawn from its own seed."""
        from .. import batchaug

        c = self.config
        pad = max(0, (c.img_size - 28) // 2)
        img = torch.nn.functional.pad(self.images[indices], (pad, pad, pad, pad)).unsqueeze(1).float().div_(255)
        if self.transform_train:
            boxes = batchaug.crop_boxes(seeds, img.shape[-2], img.shape[-1], tuple(c.crop_scale), flip=c.flip)
            img = batchaug.resized_crops(img, boxes, c.img_size)
        elif img.shape[-1] != c.img_size:
            img = torch.nn.functional.interpolate(img, size=(c.img_size, c.img_size), mode="bicubic",
                                                  antialias=True, align_corners=False)
        img = batchaug.normalize(img, self.mean[:1], self.std[:1])
        if c.channels == 3:
            img = img.expand(-1, 3, -1, -1).contiguous()
        return {"image": img, "label": self.labels[indices]}


def _held_out(samples: list[tuple[Path, int]], root: Path, fraction: float) -> set[int]:
    """Indices of the held-out files: in every class of at least 2 files, the
    ``max(1, round(fraction * n))`` whose SHA-1 of the path relative to ``root`` is smallest:
    a function of the file names only (the same wherever the folder lives)."""
    import hashlib

    by_class: dict[int, list[tuple[str, int]]] = {}
    for i, (p, k) in enumerate(samples):
        digest = hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest()
        by_class.setdefault(k, []).append((digest, i))
    out: set[int] = set()
    for items in by_class.values():
        if len(items) >= 2:
            out.update(i for _, i in sorted(items)[: max(1, round(fraction * len(items)))])
    return out



def norm_stats(config: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of an image source's ``data.mean``/``data.std``, defaulting to ImageNet's for 3
    channels and 0.5 otherwise; one value per channel or a DataError naming the key."""
    mean = config.mean or (IMAGENET_MEAN if config.channels == 3 else (0.5,))
    std = config.std or (IMAGENET_STD if config.channels == 3 else (0.5,))
    for key, v in (("mean", mean), ("std", std)):
        if len(v) != config.channels:
            raise DataError(f"data.{key}={list(v)} has {len(v)} values but data.channels={config.channels}")
    return tuple(mean), tuple(std)

class ImageFolder(Dataset):
    """Images in ``root``: class subfolders (torchvision ImageFolder layout, labels from the
    folder names) or a flat folder of unlabeled images (the common case for pretraining)."""

    @attrs.define(kw_only=True)
    class Config:
        root: str
        img_size: int = attrs.field(default=224, validator=positive, metadata={"geometry": "img_size"})  # every image is resized to it
        # every image is converted to RGB (3) or grayscale (1), whatever its own mode
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)), metadata={"geometry": "channels"})
        augment: bool = True
        crop_scale: tuple[float, float] = (0.2, 1.0)
        flip: bool = True
        mean: tuple[float, ...] | None = None
        std: tuple[float, ...] | None = None
        bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
        max_pixels: int = 1 << 28  # refuse decompression bombs beyond this
        # Fraction of each class kept out of training as the labelled held-out split (pictures,
        # online k-NN, `mim eval`). None: 0.1 for class folders without a val/test folder beside
        # `root`, else 0. The choice is a function of the file names.
        held_out: float | None = attrs.field(default=None, validator=attrs.validators.optional(
            [attrs.validators.ge(0.0), attrs.validators.lt(1.0)]))
        subset: str = attrs.field(default="train", validator=one_of("train", "held_out"))  # which part, when held out

    @classmethod
    def eval_split(cls, config: "ImageFolder.Config", split: str) -> "ImageFolder.Config | None":
        """Labelled evaluation splits: a ``root`` named ``train`` is the train split and its
        sibling ``val`` (or ``test``) folder, when present, the test split (ImageNet layout)."""
        if split == "train":
            return attrs.evolve(config, subset="train")
        sibling = cls._sibling(config)
        if sibling is not None:
            return attrs.evolve(config, root=str(sibling), held_out=0.0, subset="train")
        if cls.held_out_fraction(config) > 0:
            return attrs.evolve(config, subset="held_out")
        return None

    @staticmethod
    def _sibling(config: "ImageFolder.Config") -> Path | None:
        root = Path(config.root)
        if root.name == "train":
            for name in ("val", "test"):
                if (root.parent / name).is_dir():
                    return root.parent / name
        return None

    @classmethod
    def held_out_fraction(cls, config: "ImageFolder.Config") -> float:
        """``held_out``, or its automatic value: 0.1 for class folders with no val/test folder
        beside ``root``, else 0."""
        if config.held_out is not None:
            return config.held_out
        root = Path(config.root)
        labelled = root.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
        return 0.1 if labelled and cls._sibling(config) is None else 0.0

    def __init__(self, config: "ImageFolder.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        if subdirs:
            self.classes = [d.name for d in subdirs]
            self.samples = [(p, k) for k, d in enumerate(subdirs) for p in sorted(d.rglob("*")) if p.is_file()]
            loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
            if loose:  # the class layout wins; say so rather than drop files silently
                warnings.warn(f"{root}: {len(loose)} files beside the class subfolders are ignored (e.g. {loose[0]}); "
                              "move them into a class folder, or point data.root at a flat folder", stacklevel=2)
        else:
            self.classes = []
            self.samples = [(p, -1) for p in sorted(root.iterdir()) if p.is_file()]
        self.samples = [(p, k) for p, k in self.samples if not p.name.startswith(".")]
        if not self.samples:
            raise DataError(f"no files in image folder {root}")
        frac = self.held_out_fraction(config)
        if frac > 0:
            kept = _held_out(self.samples, root, frac)
            if train is None and config.subset == "train":
                print(f"data: {len(kept)} of the {len(self.samples)} images in {root} ({frac:.0%} of each class) are "
                      f"held out of training for evaluation (data.held_out; 0 trains on all)", flush=True)
            self.samples = [s for i, s in enumerate(self.samples) if (i in kept) == (config.subset == "held_out")]
            if not self.samples:
                raise DataError(f"data.held_out={frac}: no images left for the {config.subset} part of {root}")
        self.mean, self.std = norm_stats(config)
        if train is None:  # the training set (not its evaluation copies)
            self._note_small_images()
        train = config.augment if train is None else train
        self.transform = _augment(config.img_size, config.crop_scale, config.flip, self.mean, self.std, train)

    def __len__(self) -> int:
        return len(self.samples)

    def _note_small_images(self, probe: int = 16) -> None:
        """One line when the images are much smaller than ``img_size`` (they are upscaled): the
        usual sign of a tiny-image folder under a 224 preset. Reads only a few file headers."""
        sizes = []
        for path, _ in self.samples[:probe]:
            try:
                with Image.open(path) as im:
                    sizes.append(min(im.size))
            except Exception:  # unreadable files are reported (or skipped) when loaded
                continue
        if sizes and max(sizes) * 2 <= self.config.img_size:
            print(f"note: the images in {self.config.root} are about {max(sizes)} px but data.img_size is "
                  f"{self.config.img_size}: they are upscaled. For a smaller, faster model set data.img_size "
                  f"(the model follows it)", flush=True)

    def load(self, path: Path) -> Image.Image:
        """Decode one file to RGB or L; every failure names the file."""
        Image.MAX_IMAGE_PIXELS = self.config.max_pixels
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                if im.mode.startswith("I;16") or im.mode == "I":
                    arr = np.asarray(im, dtype=np.float32)
                    im = Image.fromarray((arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8))
                return im.convert("RGB" if self.config.channels == 3 else "L")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        try:
            img = self.load(path)
        except DataError:
            if self.config.bad_data == "skip":
                return {"_bad": str(path)}
            raise
        return {"image": self.transform(img), "label": label}
