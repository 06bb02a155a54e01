"""Data sources and the seeded loader.

Every random choice of the data pipeline (augmentation, mask noise) derives from
(seed, epoch, sample index), and the order of samples from (seed, epoch): a run is the same
whatever the number of processes or workers, and a resumed run continues exactly.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from .schema import one_of
from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, epoch, index, stream), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def _augment(img_size: int, scale: tuple[float, float], flip: bool, mean: tuple, std: tuple, train: bool) -> v2.Compose:
    """MAE's pretraining augmentation: RandomResizedCrop (bicubic) + flip + normalize."""
    ops: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if train:
        ops.append(v2.RandomResizedCrop(img_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
    else:
        ops.append(v2.Resize(img_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        ops.append(v2.CenterCrop(img_size))
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


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
        img_size: int = 32
        channels: int = attrs.field(default=1, validator=attrs.validators.in_((1, 3)))
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

    @staticmethod
    def _find(root: str | None) -> Path:
        candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEBIAN_FASHION_MNIST]
        for c in candidates:
            if c.is_dir() and any(c.glob("*-images-idx3-ubyte*")):
                return c
        hint = "install it with `apt-get install dataset-fashion-mnist` (the set-up script does)"
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


class ImageFolder(Dataset):
    """Images in ``root``: class subfolders (torchvision ImageFolder layout, labels from the
    folder names) or a flat folder of unlabeled images (the common case for pretraining)."""

    @attrs.define(kw_only=True)
    class Config:
        root: str
        img_size: int = 224
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)))
        augment: bool = True
        crop_scale: tuple[float, float] = (0.2, 1.0)
        flip: bool = True
        mean: tuple[float, ...] | None = None
        std: tuple[float, ...] | None = None
        bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
        max_pixels: int = 1 << 28  # refuse decompression bombs beyond this

    @classmethod
    def eval_split(cls, config: "ImageFolder.Config", split: str) -> "ImageFolder.Config | None":
        """Labelled evaluation splits: a ``root`` named ``train`` is the train split and its
        sibling ``val`` (or ``test``) folder, when present, the test split (ImageNet layout)."""
        root = Path(config.root)
        if split == "train":
            return config
        if root.name == "train":
            for name in ("val", "test"):
                if (root.parent / name).is_dir():
                    return attrs.evolve(config, root=str(root.parent / name))
        return None

    def __init__(self, config: "ImageFolder.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        root = Path(config.root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
        if subdirs:
            self.classes = [d.name for d in subdirs]
            self.samples = [(p, k) for k, d in enumerate(subdirs) for p in sorted(d.rglob("*")) if p.is_file()]
        else:
            self.classes = []
            self.samples = [(p, -1) for p in sorted(root.iterdir()) if p.is_file()]
        self.samples = [(p, k) for p, k in self.samples if not p.name.startswith(".")]
        if not self.samples:
            raise DataError(f"no files in image folder {root}")
        mean = config.mean or (IMAGENET_MEAN if config.channels == 3 else (0.5,))
        std = config.std or (IMAGENET_STD if config.channels == 3 else (0.5,))
        self.mean, self.std = tuple(mean), tuple(std)
        train = config.augment if train is None else train
        self.transform = _augment(config.img_size, config.crop_scale, config.flip, self.mean, self.std, train)

    def __len__(self) -> int:
        return len(self.samples)

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


class SeededDataset(Dataset):
    """Wraps a dataset so each item's randomness derives from (seed, epoch, index): it adds
    ``index`` and the masker's per-sample ``mask_noise``."""

    def __init__(self, dataset: Dataset, seed: int, noise_fn: Callable[[torch.Generator], torch.Tensor] | None = None):
        self.dataset, self.seed, self.noise_fn, self.epoch = dataset, seed, noise_fn, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.seed, self.epoch, i, 0))
            item = dict(self.dataset[i])
        if "_bad" in item:
            return item
        item["index"] = i
        if self.noise_fn is not None:
            item["mask_noise"] = self.noise_fn(torch.Generator().manual_seed(seed_for(self.seed, self.epoch, i, 1)))
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate, dropping items a ``skip`` policy marked bad (their paths are kept)."""
    bad = [it["_bad"] for it in items if "_bad" in it]
    good = [it for it in items if "_bad" not in it]
    batch = default_collate(good) if good else {}
    batch["_skipped"] = bad
    return batch


def epoch_batches(n: int, seed: int, epoch: int, global_batch: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of one epoch: a (seed, epoch) permutation cut into global batches,
    each split into ``world`` contiguous parts. The last partial batch is dropped."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch, 2))).tolist()
    per = global_batch // world
    return [perm[k * global_batch + rank * per : k * global_batch + (rank + 1) * per] for k in range(n // global_batch)]

