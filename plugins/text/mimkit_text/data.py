"""Captioned image data: items are ``{"image": (C, H, W), "text": str, "label": int}``.

* ``fashion_mnist_captions`` - Fashion-MNIST with a caption from class templates ("a photo of a
  sneaker."); the template is drawn per item from (seed, epoch, index) in training, the first
  one otherwise. The large labelled set, offline from Debian's ``dataset-fashion-mnist``.
* ``image_text_folder`` - what users have: images with a sibling ``.txt`` caption (its first
  line), or a CSV / JSONL file of ``path,caption`` rows. A bad caption (missing file, not UTF-8,
  empty) is an error naming the file, or with ``bad_captions: skip`` is skipped and counted
  (``skipped`` lists them; the count is printed once).
* ``tuxpaint_stamps`` - Debian's ``tuxpaint-stamps-default``: ~785 photos and clipart, the
  caption is the first line of each stamp's ``.txt``, the label its top-level folder.
* ``noto_emoji`` - npm's ``emoji-datasource-google``: 64-px Noto emoji, caption "an emoji of
  NAME", label the category (``Component`` left out), split by name so skin-tone variants of one
  emoji never straddle train and test.
Nothing here downloads: a missing package is a ``DataError`` saying how to install it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mimkit.plugin_api import IMAGENET_MEAN, IMAGENET_STD, DataError, FashionMNIST, one_of

#: Caption names of the Fashion-MNIST classes (the core's names are "T-shirt/top", "Ankle boot", ...).
FASHION_MNIST_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle boot")
TRAIN_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {} on a plain background.",
                   "a black and white photo of a {}.", "a low resolution photo of a {}.", "a product photo of a {}.")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm"}


def transform(img_size: int, train: bool, scale: tuple[float, float], flip: bool, mean: tuple, std: tuple) -> v2.Compose:
    """RandomResizedCrop (bicubic, area ``scale``: FLIP uses (0.5, 1)) + flip, or resize + center crop."""
    ops: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if train:
        ops.append(v2.RandomResizedCrop(img_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
    else:
        ops += [v2.Resize(img_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(img_size)]
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def in_test_split(key: str, test_fraction: float) -> bool:
    """A stable split from a name's hash (independent of file order and of the machine)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (h % 10_000) < test_fraction * 10_000


def load_image(path: Path, channels: int) -> Image.Image:
    """Decode to RGB or L; transparency is composited onto white; failures name the file."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
            return im.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _read_utf8(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_caption_file(path: Path) -> str:
    """The first non-empty line of a caption ``.txt``; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"caption file missing: {path} (every image needs a sibling .txt caption)")
    text = _read_utf8(path, "caption file")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise DataError(f"caption file {path} is empty")
    return line


# ---------------------------------------------------------------------------------------------


class CaptionedFashionMNIST(FashionMNIST):
    """Fashion-MNIST whose items also carry a class-template caption."""

    @attrs.define(kw_only=True)
    class Config(FashionMNIST.Config):
        templates: list[str] = attrs.field(factory=lambda: list(TRAIN_TEMPLATES))
        class_names: list[str] = attrs.field(factory=lambda: list(FASHION_MNIST_NAMES))

    def __init__(self, config: "CaptionedFashionMNIST.Config", split: str | None = None, train: bool | None = None):
        super().__init__(config, split=split, train=train)
        if len(config.class_names) != 10 or not config.templates or any("{}" not in t for t in config.templates):
            raise DataError("fashion_mnist_captions: class_names must list 10 names and every template hold '{}'")
        self.class_names = tuple(config.class_names)
        self.random_template = config.augment if train is None else train

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        t = self.config.templates
        k = int(torch.randint(len(t), ()).item()) if self.random_template and len(t) > 1 else 0
        item["text"] = t[k].format(self.class_names[item["label"]])
        return item


class ImageTextFolder(Dataset):
    """Images with captions from a folder (``x.png`` + ``x.txt``) or a CSV/JSONL index."""

    @attrs.define(kw_only=True)
    class Config:
        root: str
        captions: str | None = None  # CSV (header path,caption) or JSONL ({"path", "caption"}); paths relative to root
        img_size: int = 224
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)))
        augment: bool = True
        crop_scale: tuple[float, float] = (0.5, 1.0)  # FLIP's area range
        flip: bool = True
        mean: tuple[float, ...] | None = None
        std: tuple[float, ...] | None = None
        bad_captions: str = attrs.field(default="error", validator=one_of("error", "skip"))
        labels: str = attrs.field(default="none", validator=one_of("none", "folder"))  # folder: first path component
        split: str = attrs.field(default="all", validator=one_of("all", "train", "test"))
        test_fraction: float = 0.2
        limit: int | None = None

    @classmethod
    def eval_split(cls, config: "ImageTextFolder.Config", split: str) -> "ImageTextFolder.Config | None":
        """Labelled splits exist when the folder is split by name (``split: train|test``) and labelled."""
        if config.split == "all" or config.labels == "none":
            return None
        return attrs.evolve(config, split=split, limit=None)

    def __init__(self, config: "ImageTextFolder.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise DataError(f"image_text_folder: root not found: {self.root}")
        self.skipped: list[str] = []
        pairs = self._index()
        split = split if split in ("train", "test") else config.split
        if split != "all":
            pairs = [(p, c) for p, c in pairs if in_test_split(self.split_key(p), config.test_fraction) == (split == "test")]
        if config.limit is not None:
            pairs = pairs[: config.limit]
        if not pairs:
            raise DataError(f"image_text_folder: no captioned images in {self.root} (split {split})")
        self.samples = pairs
        self.classes: list[str] = []
        self.labels = np.full(len(pairs), -1, dtype=np.int64)
        if config.labels == "folder":
            names = [p.relative_to(self.root).parts[0] if len(p.relative_to(self.root).parts) > 1 else "" for p, _ in pairs]
            self.classes = sorted(set(names))
            self.labels = np.asarray([self.classes.index(n) for n in names], dtype=np.int64)
        self.class_names = tuple(self.classes)
        mean = config.mean or (IMAGENET_MEAN if config.channels == 3 else (0.5,))
        std = config.std or (IMAGENET_STD if config.channels == 3 else (0.5,))
        self.mean, self.std = tuple(mean), tuple(std)
        train = config.augment if train is None else train
        self.transform = transform(config.img_size, train, config.crop_scale, config.flip, self.mean, self.std)
        if self.skipped:
            print(f"image_text_folder: skipped {len(self.skipped)} images with a bad caption in {self.root} "
                  f"(e.g. {self.skipped[0]})")

    def split_key(self, path: Path) -> str:
        return str(path.relative_to(self.root).with_suffix(""))

    def _bad(self, message: str) -> None:
        if self.config.bad_captions == "error":
            raise DataError(message + "; set bad_captions: skip to skip such images")
        self.skipped.append(message)

    def _index(self) -> list[tuple[Path, str]]:
        if self.config.captions is not None:
            return self._index_file(Path(self.config.captions) if os.path.isabs(self.config.captions)
                                    else self.root / self.config.captions)
        out = []
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
                continue
            try:
                out.append((p, read_caption_file(p.with_suffix(".txt"))))
            except DataError as exc:
                self._bad(str(exc))
        return out

    def _index_file(self, index: Path) -> list[tuple[Path, str]]:
        if not index.is_file():
            raise DataError(f"image_text_folder: captions file not found: {index}")
        text = _read_utf8(index, "captions file")
        rows: list[tuple[int, Any, Any]] = []
        if index.suffix.lower() == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{index} line {n}: not JSON ({exc.msg})") from None
                rows.append((n, rec.get("path") if isinstance(rec, dict) else None, rec.get("caption") if isinstance(rec, dict) else None))
        else:
            reader = csv.DictReader(text.splitlines())
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{index}: a CSV captions file needs a header with 'path' and 'caption', got {reader.fieldnames}")
            rows = [(n, r.get("path"), r.get("caption")) for n, r in enumerate(reader, 2)]
        out = []
        for n, path, caption in rows:
            if not path:
                raise DataError(f"{index} line {n}: no 'path'")
            p = self.root / path
            if not isinstance(caption, str) or not caption.strip():
                self._bad(f"{index} line {n}: empty or missing caption for {p}")
            elif not p.is_file():
                self._bad(f"{index} line {n}: image not found: {p}")
            else:
                out.append((p, caption.strip()))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, caption = self.samples[i]
        img = load_image(path, self.config.channels)
        return {"image": self.transform(img), "text": caption, "label": int(self.labels[i])}


TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")


class TuxPaintStamps(ImageTextFolder):
    """Debian ``tuxpaint-stamps-default``: stamps with English captions, labelled by top-level folder."""

    @attrs.define(kw_only=True)
    class Config(ImageTextFolder.Config):
        root: str | None = None  # default: Debian's folder, else ~/.cache/mimkit/tuxpaint (setup_language_data.sh)
        bad_captions: str = attrs.field(default="skip", validator=one_of("error", "skip"))
        labels: str = attrs.field(default="folder", validator=one_of("none", "folder"))

    def __init__(self, config: "TuxPaintStamps.Config", split: str | None = None, train: bool | None = None):
        candidates = [Path(config.root)] if config.root else [
            TUXPAINT_ROOT, Path.home() / ".cache/mimkit/tuxpaint" / TUXPAINT_ROOT.relative_to("/")]
        root = next((c for c in candidates if c.is_dir()), None)
        if root is None:
            raise DataError(f"Tux Paint stamps not found in {', '.join(map(str, candidates))}: "
                            "`apt-get install tuxpaint-stamps-default` or `bash scripts/setup_language_data.sh`")
        super().__init__(attrs.evolve(config, root=str(root)), split=split, train=train)

    def split_key(self, path: Path) -> str:
        return path.stem  # a stamp's name: its variants in other folders stay on one side


EMOJI_PACKAGE = "emoji-datasource-google"


def find_emoji_root(root: str | None) -> Path:
    candidates = [Path(root)] if root else []
    env = os.environ.get("MIMKIT_EMOJI_ROOT")
    candidates += [Path(env)] if env else []
    candidates += [Path.home() / ".cache/mimkit/node_modules" / EMOJI_PACKAGE, Path("node_modules") / EMOJI_PACKAGE,
                   Path("/usr/lib/node_modules") / EMOJI_PACKAGE, Path("/usr/local/lib/node_modules") / EMOJI_PACKAGE]
    for c in candidates:
        if (c / "emoji.json").is_file():
            return c
    raise DataError(f"{EMOJI_PACKAGE} not found in {', '.join(map(str, candidates))}: install it with "
                    "`bash scripts/setup_language_data.sh` (npm, into ~/.cache/mimkit) or set MIMKIT_EMOJI_ROOT")


class NotoEmoji(Dataset):
    """Noto emoji (64 px) with their names as captions and their category as label."""

    @attrs.define(kw_only=True)
    class Config:
        root: str | None = None
        img_size: int = 64
        size: int = attrs.field(default=64, validator=attrs.validators.in_((16, 20, 32, 64)))
        split: str = attrs.field(default="train", validator=one_of("all", "train", "test"))
        test_fraction: float = 0.2
        skin_tones: bool = True
        template: str = "an emoji of {}."
        augment: bool = True
        crop_scale: tuple[float, float] = (0.5, 1.0)
        flip: bool = False  # emoji have a handedness
        limit: int | None = None

    @classmethod
    def eval_split(cls, config: "NotoEmoji.Config", split: str) -> "NotoEmoji.Config":
        """The labelled train / test split (by name), whole."""
        return attrs.evolve(config, split=split, limit=None)

    def __init__(self, config: "NotoEmoji.Config", split: str | None = None, train: bool | None = None):
        self.config = config
        self.root = find_emoji_root(config.root)
        entries = json.loads((self.root / "emoji.json").read_text(encoding="utf-8"))
        split = split if split in ("train", "test") else config.split
        self.classes = sorted({e["category"] for e in entries if e.get("category") and e["category"] != "Component"})
        self.class_names = tuple(c.replace(" & ", " and ").lower() for c in self.classes)
        folder = self.root / "img" / "google" / str(config.size)
        samples = []
        for e in entries:
            cat, name = e.get("category"), (e.get("name") or e.get("short_name") or "").lower()
            if cat not in self.classes or not name:
                continue
            if split != "all" and in_test_split(name, config.test_fraction) != (split == "test"):
                continue
            files = [e["image"]] if e.get("has_img_google", True) else []
            if config.skin_tones:
                files += [v["image"] for v in (e.get("skin_variations") or {}).values() if v.get("has_img_google", True)]
            samples += [(folder / f, config.template.format(name), self.classes.index(cat)) for f in files]
        samples = [s for s in samples if s[0].is_file()]
        if config.limit is not None:
            samples = samples[: config.limit]
        if not samples:
            raise DataError(f"noto_emoji: no images under {folder}")
        self.samples = samples
        self.labels = np.asarray([s[2] for s in samples], dtype=np.int64)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        train = config.augment if train is None else train
        self.transform = transform(config.img_size, train, config.crop_scale, config.flip, self.mean, self.std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, caption, label = self.samples[i]
        return {"image": self.transform(load_image(path, 3)), "text": caption, "label": label}
