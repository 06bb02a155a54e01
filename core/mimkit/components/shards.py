"""Data as tar shards (the WebDataset layout), for data sets too large for a folder of files.

A shard is a plain tar file whose members are grouped by key, ``<key>.<ext>``: the image
(``.png``/``.jpg``/...) and its label (``.cls``, a decimal integer), as ``webdataset`` writes and
reads them. ``mim shard IMAGE_FOLDER OUT/ --shard-size N`` writes them from an image folder (class
subfolders -> labels) with an ``index.json`` of where each sample sits; shards written by other
tools are indexed by reading their tar headers once.

The reader is the standard library's ``tarfile`` over that index, not ``webdataset``'s streaming
pipeline: reading by sample index is what gives the guarantees of the other data sources -- the
order of an epoch is a (seed, epoch) permutation of all samples, each sample's augmentation and
mask come from (seed, epoch, index), so any number of processes and loader workers sees the same
samples with the same randomness, and a run resumes exactly in the middle of an epoch. A streaming
reader shuffles shards and a buffer per worker, so what it yields depends on the number of
processes and workers, and a resume replays or skips. The cost: a random read (one ``seek``) per
sample, fine on local disks and shared file systems, not on an object store.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import attrs
from PIL import Image
from torch.utils.data import Dataset

from ..data import IMAGE_SUFFIXES, _augment
from ..errors import DataError
from ..schema import one_of, positive
from .datasets import ImageFolder, norm_stats

INDEX = "index.json"
FORMAT = "mimkit-shards/1"


def _key_ext(name: str) -> tuple[str, str]:
    """WebDataset's split: the key is everything before the first dot of the base name."""
    base = name.rsplit("/", 1)[-1]
    stem, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + stem, ext.lower()


def index_tar(path: Path) -> list[list]:
    """``[[offset, size, label], ...]`` of the image members of one shard, in tar order, read from
    its headers (a missing ``.cls`` is label -1)."""
    samples: dict[str, list] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = _key_ext(m.name)
                if "." + ext.rsplit(".", 1)[-1] in IMAGE_SUFFIXES and key not in samples:
                    samples[key] = [m.offset_data, m.size, -1]
                elif ext == "cls":
                    f = tar.extractfile(m)
                    labels[key] = int(f.read().decode().strip()) if f is not None else -1
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from None
    for key, lab in labels.items():
        if key in samples:
            samples[key][2] = lab
    return list(samples.values())


def _shard_files(root: Path) -> list[Path]:
    if root.is_file() and root.suffix == ".tar":
        return [root]
    if not root.is_dir():
        raise DataError(f"shard folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.suffix == ".tar" and p.is_file())


class Shards(Dataset):
    """Images in tar shards (WebDataset layout), read by sample index; see the module docstring."""

    @attrs.define(kw_only=True)
    class Config:
        root: str  # a folder of *.tar shards (with the index.json of `mim shard`, else indexed on start), or one .tar
        img_size: int = attrs.field(default=224, validator=positive, metadata={"geometry": "img_size"})
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)), metadata={"geometry": "channels"})
        augment: bool = True
        crop_scale: tuple[float, float] = (0.2, 1.0)
        flip: bool = True
        mean: tuple[float, ...] | None = None
        std: tuple[float, ...] | None = None
        bad_data: str = attrs.field(default="error", validator=one_of("error", "skip"))
        max_pixels: int = 1 << 28
        limit: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))  # the first N

    @classmethod
    def eval_split(cls, config: "Shards.Config", split: str) -> "Shards.Config | None":
        """A ``root`` named ``train`` is the train split, its sibling ``val`` (or ``test``) shard
        folder the test split (the ImageNet layout)."""
        if split == "train":
            return config
        root = Path(config.root)
        if root.name == "train":
            for name in ("val", "test"):
                if (root.parent / name).is_dir():
                    return attrs.evolve(config, root=str(root.parent / name), limit=None)
        return None

    def __init__(self, config: "Shards.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        root = Path(config.root)
        index = root / INDEX if root.is_dir() else None
        if index is not None and index.is_file():
            try:
                meta = json.loads(index.read_text())
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
                shards = [(root / s["name"], s["samples"]) for s in meta["shards"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"cannot read {index}: {exc}") from None
            self.classes = list(meta.get("classes", []))
        else:
            shards = [(p, index_tar(p)) for p in _shard_files(root)]
            self.classes = []
        self.files = [str(p) for p, _ in shards]
        # (shard, byte offset, size, label) of every sample, in shard order
        self.index = [(k, int(o), int(n), int(lab)) for k, (_, rows) in enumerate(shards) for o, n, lab in rows]
        if config.limit is not None:
            self.index = self.index[: config.limit]
        self.labels = [lab for *_, lab in self.index]  # read by the evaluation without decoding images
        if not self.index:
            raise DataError(f"no images in the shards of {root}")
        self.mean, self.std = norm_stats(config)
        train = config.augment if train is None else train
        self.transform = _augment(config.img_size, config.crop_scale, config.flip, self.mean, self.std, train)
        self._open: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:  # loader workers open their own files
        return self.__dict__ | {"_open": {}}

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: never share the parent's file positions
            self._open, self._pid = {}, os.getpid()
        f = self._open.get(shard)
        if f is None:
            f = self._open[shard] = open(self.files[shard], "rb")  # noqa: SIM115  (kept open, one per shard)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise DataError(f"shard {self.files[shard]} is truncated: {size} bytes expected at offset {offset}, "
                            f"{len(data)} read")
        return data

    load = ImageFolder.load  # the same decoding (mode, alpha, 16-bit, decompression bombs) as image folders

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, offset, size, label = self.index[i]
        where = f"{self.files[shard]} (sample {i}, byte {offset})"
        try:
            img = self.load(io.BytesIO(self._read(shard, offset, size)))
        except (DataError, OSError) as exc:
            if self.config.bad_data == "skip":
                return {"_bad": where}
            raise DataError(f"cannot read image {where}: {str(exc).split(': ', 1)[-1]}") from None
        return {"image": self.transform(img), "label": label}


# ---------------------------------------------------------------------------------------------
# Writing shards: `mim shard`


def write_shards(folder: str | os.PathLike, out: str | os.PathLike, shard_size: int) -> dict[str, Any]:
    """Write the images of ``folder`` (class subfolders -> labels in sorted order, or a flat folder:
    label -1) into ``out/shard-000000.tar ...`` of ``shard_size`` samples each, the files' bytes as
    they are (no re-encoding), plus ``index.json``; returns the index's summary. Each shard is
    written to a temporary name and renamed; ``index.json`` comes last and marks the set complete."""
    folder, out = Path(folder), Path(out)
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    if out.exists() and (not out.is_dir() or any(p.suffix == ".tar" or p.name == INDEX for p in out.iterdir())):
        raise DataError(f"{out} already holds shards (or is a file; an interrupted `mim shard` leaves shards without "
                        f"{INDEX}): pick a new or empty folder")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        classes = [d.name for d in subdirs]
        files = [(p, k) for k, d in enumerate(subdirs) for p in sorted(d.rglob("*"))
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    else:
        classes = []
        files = [(p, -1) for p in sorted(folder.iterdir())
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(files), shard_size):
        name = f"shard-{s // shard_size:06d}.tar"
        tmp = out / f".{name}.tmp"
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (path, label) in enumerate(files[s:s + shard_size], start=s):
                key = f"{i:09d}"
                data = path.read_bytes()
                try:  # refuse now what the reader could not decode later
                    with Image.open(io.BytesIO(data)) as im:
                        im.verify()
                except Exception as exc:  # noqa: BLE001  (PIL raises many kinds)
                    tmp.unlink(missing_ok=True)
                    raise DataError(f"cannot read image {path}: {exc}") from None
                for member, payload in ((f"{key}{path.suffix.lower()}", data), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
        rows = index_tar(tmp)
        os.replace(tmp, out / name)
        shards.append({"name": name, "samples": rows})
    summary = {"format": FORMAT, "source": str(folder.resolve()), "classes": classes,
               "num_samples": len(files), "shard_size": shard_size, "shards": shards}
    (out / f".{INDEX}.tmp").write_text(json.dumps(summary))
    os.replace(out / f".{INDEX}.tmp", out / INDEX)
    return {k: v for k, v in summary.items() if k != "shards"} | {"num_shards": len(shards)}
