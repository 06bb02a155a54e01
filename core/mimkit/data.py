"""Data utilities and the seeded loader (the built-in data sources live in
:mod:`mimkit.components.datasets`).

Every random choice of the data pipeline (augmentation, mask noise) derives from
(seed, epoch, sample index), and the order of samples from (seed, epoch): a run is the same
whatever the number of processes or workers, and a resumed run continues exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2

from .errors import ConfigError


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
    if not (isinstance(img_size, int) and img_size >= 1):
        raise ConfigError(f"invalid value {img_size!r} for the dataset's 'img_size' (data.img_size): "
                          "must be an integer >= 1 (pixels per side)")
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


class SeededDataset(Dataset):
    """Wraps a dataset so each item's randomness derives from (seed, epoch, index): it adds
    ``index`` and the masker's per-sample ``mask_noise``."""

    def __init__(self, dataset: Dataset, seed: int, noise_fn: Callable[[torch.Generator], torch.Tensor] | None = None):
        self.dataset, self.seed, self.noise_fn, self.epoch = dataset, seed, noise_fn, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def batched(self) -> bool:
        """Whether the dataset has the batched fast path ``get_batch(indices, seeds)``."""
        return has_batch_path(self.dataset)

    def get_batch(self, indices: list[int]) -> dict[str, Any]:
        """A collated batch: the dataset's ``get_batch`` with each sample's seed (stream 0, as in
        ``__getitem__``), plus ``index`` and the per-sample ``mask_noise`` (stream 1)."""
        indices = [int(i) for i in indices]
        # One intra-op thread: the batch's ops are small, and OpenMP's spinning second thread made
        # them 5-10x slower on a loaded 2-core machine (benchmarks/README.md, the demo step).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            batch = dict(self.dataset.get_batch(indices, [seed_for(self.seed, self.epoch, i, 0) for i in indices]))
            batch["index"] = torch.tensor(indices)
            if self.noise_fn is not None:
                batch["mask_noise"] = torch.stack([
                    self.noise_fn(torch.Generator().manual_seed(seed_for(self.seed, self.epoch, i, 1))) for i in indices])
        finally:
            torch.set_num_threads(threads)
        batch["_skipped"] = []
        return batch

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


def has_batch_path(dataset: Any) -> bool:
    """Whether ``dataset.get_batch(indices, seeds)`` stands for its ``__getitem__``: defined, and not
    inherited past a subclass that overrides ``__getitem__`` (whose additions it would miss)."""
    cls = type(dataset)
    if not callable(getattr(cls, "get_batch", None)):
        return False
    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in c.__dict__)
    return issubclass(owner("get_batch"), owner("__getitem__"))


class BatchedView(Dataset):
    """``view[indices]`` is a whole collated batch from the dataset's ``get_batch`` fast path: a
    DataLoader over it (``batch_size=None``, the batches as sampler) skips per-item collation."""

    def __init__(self, seeded: "SeededDataset"):
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        return self.seeded.get_batch(indices)


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

