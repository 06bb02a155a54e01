"""What every evaluation protocol shares: the source model, the labelled splits, the labelled
fraction, frozen features and the result record.

Every protocol can run on a labelled fraction (``labels_fraction``) chosen by
:func:`class_balanced_split`, a deterministic function of (labels, fraction, seed); the
result records the seed and a SHA-256 of the chosen indices so that tables can be audited.
``init="random"`` gives the randomly initialized baseline of the same architecture.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..api import build_model, load
from ..config import Recipe, resolve
from ..data import collate
from ..errors import CheckpointError, ConfigError, MimkitError
from ..plugins import registry as get_registry
from ..schema import component, in_range, one_of, positive, structure


@attrs.define(kw_only=True)
class CommonConfig:
    """Options of every built-in protocol (``mim eval NAME --help`` lists them as flags)."""

    init: str = attrs.field(default="pretrained", validator=one_of("pretrained", "random"))  # random: the baseline
    seed: int = 0  # training / random-init seed
    labels_fraction: float | None = attrs.field(default=None, validator=in_range(0, 1, low_open=True))  # class-balanced
    split_seed: int = 0  # seed of the labels-fraction split
    limit_train: int | None = attrs.field(default=None, validator=positive)  # only the first N training items
    limit_test: int | None = attrs.field(default=None, validator=positive)  # only the first N test items
    val_root: str | None = None  # the test folder, for a data source without a labelled test split


def record_name(protocol: str, config: Any) -> str:
    """The default result file name: ``{protocol}_{init}[_frac{f}]_seed{seed}.json``."""
    frac = "" if config.labels_fraction is None else f"_frac{config.labels_fraction:g}"
    return f"{protocol}_{config.init}{frac}_seed{config.seed}.json"


def protocol_config(cls: type, options: dict[str, Any], name: str) -> Any:
    """The keyword options of a protocol's Python function (``knn(src, k=10)``) as its
    validated ``Config``: the Config is the one place the defaults live, for the function and
    for the ``mim eval`` flags alike. Unknown names and bad values are ConfigErrors."""
    values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    return structure(cls.Config, values, name)


# ---------------------------------------------------------------------------------------------
# Sources: what a protocol starts from


def load_source(source: str | os.PathLike, init: str = "pretrained", seed: int = 0) -> torch.nn.Module:
    """The model to evaluate, in eval mode, with ``.recipe`` set.

    ``source`` is anything :func:`mimkit.load` accepts, a timm/encoder export
    (``mimkit_content: encoder``: its timm keys are put back under ``encoder.vit.``), or a
    recipe YAML file. With ``init="random"`` (or a recipe file) only the architecture is taken
    from the source and the weights are a fresh, seeded initialization - the baseline.
    """
    if init not in ("pretrained", "random"):
        raise ConfigError(f"init must be 'pretrained' or 'random', got {init!r}")
    p = Path(source)
    if not p.exists():
        raise CheckpointError(f"no such file or folder: {p}")
    if p.suffix in (".yaml", ".yml"):
        recipe = resolve(p)
        if init == "pretrained":
            raise ConfigError(f"{p} is a recipe, not weights: pass --init random for a randomly initialized baseline")
        return _random_model(recipe, seed)
    model = load(p)
    if init == "random":
        return _random_model(model.recipe, seed)
    return model


def _random_model(recipe: Recipe, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(recipe)
    model.recipe = recipe
    return model.eval()


def vit_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The model's ``vit`` encoder (a :class:`~mimkit.components.vit.ViTEncoder`)."""
    enc = getattr(model, "encoder", None)
    if enc is None or not hasattr(enc, "vit"):
        raise MimkitError("this protocol needs a model whose encoder is the timm `vit` encoder")
    return enc


def eval_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder evaluation reads: ``model.eval_encoder`` when the model defines one (iBOT,
    AttMask: the EMA teacher's, as their official evaluation loads the ``teacher`` weights),
    else the model's ``vit`` encoder."""
    enc = getattr(model, "eval_encoder", None)
    if enc is None:
        return vit_encoder(model)
    if not hasattr(enc, "vit"):
        raise MimkitError(f"{type(model).__name__}.eval_encoder is not a timm `vit` encoder")
    return enc


@torch.no_grad()
def encoder_features(enc: torch.nn.Module, x: torch.Tensor, pool: str = "cls", n_last_blocks: int = 1) -> torch.Tensor:
    """Frozen features of whole inputs: (B, D), or (B, n_last_blocks * D) with the pooled,
    final-normed output of each of the last ``n_last_blocks`` blocks concatenated (DINO/iBOT's
    linear protocol, ``--n_last_blocks 4``: ``get_intermediate_layers`` applies the final norm
    to each block's output, then the [CLS] tokens are concatenated)."""
    if n_last_blocks == 1:
        return enc.pool(enc.forward_features(x), pool)
    depth = len(enc.vit.blocks)
    if not 1 <= n_last_blocks <= depth:
        raise ConfigError(f"n_last_blocks must be in [1, {depth}] (the encoder's depth), got {n_last_blocks}")
    _, layers = enc.encode(enc.embed(x, None), None, return_layers=True)
    return torch.cat([enc.pool(enc.vit.norm(h), pool) for h in layers[-n_last_blocks:]], dim=-1)


# ---------------------------------------------------------------------------------------------
# Data


def _split(cls: type, config: Any, split: str) -> Any:
    """The dataset capability ``eval_split(config, split)``: the config of the source's whole
    labelled ``split`` ("train" | "test"), or None when it has none."""
    fn = getattr(cls, "eval_split", None)
    return fn(config, split) if fn is not None else None


def eval_datasets(
    recipe: Recipe,
    val_root: str | None = None,
    train_augment: bool = False,
    crop_scale: tuple[float, float] | None = None,
) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of the recipe's data source, both un-augmented unless
    ``train_augment`` (fine-tuning).

    Train is the labelled train split of ``recipe.data`` (its class's ``eval_split(config,
    "train")``, else ``recipe.data`` as is). Test is, in order: ``recipe.data`` with ``root:
    val_root``; the labelled test split of ``recipe.eval_data``; or of ``recipe.data`` (e.g.
    Fashion-MNIST's test set, an image folder's sibling ``val`` folder).

    With ``train_augment``, a data source that wraps another for pretraining views (its class has
    ``finetune_source(config)``: two_views) is replaced by the wrapped one, so fine-tuning sees one
    ordinary augmented image, not the pretraining's views; ``crop_scale`` then overrides the
    RandomResizedCrop scale (the same fine-tuning augmentation for every method).
    """
    reg = get_registry()
    cls, cfg = component("datasets", recipe.data, "data", reg)
    if train_augment and hasattr(cls, "finetune_source"):
        cls, cfg = component("datasets", cls.finetune_source(cfg), "data.base", reg)
    if train_augment and crop_scale is not None:
        if not any(f.name == "crop_scale" for f in attrs.fields(type(cfg))):
            raise ConfigError(f"crop_scale: data source {recipe.data.get('name')!r} has no RandomResizedCrop to scale")
        cfg = attrs.evolve(cfg, crop_scale=tuple(crop_scale))
    train_cfg = _split(cls, cfg, "train") or cfg
    if val_root is not None:
        if not any(f.name == "root" for f in attrs.fields(type(train_cfg))):
            raise ConfigError(f"--val-root: data source {recipe.data.get('name')!r} has no 'root' option")
        changes: dict[str, Any] = {"root": str(val_root)}
        if any(f.name == "held_out" for f in attrs.fields(type(train_cfg))):  # the whole val folder
            changes.update(held_out=0.0, subset="train")
        test_cls, test_cfg = cls, attrs.evolve(train_cfg, **changes)
    elif recipe.eval_data is not None:
        test_cls, test_cfg = component("datasets", recipe.eval_data, "eval_data", reg)
        test_cfg = _split(test_cls, test_cfg, "test") or test_cfg
    else:
        test_cls, test_cfg = cls, _split(cls, cfg, "test")
        if test_cfg is None:
            raise ConfigError(f"data source {recipe.data.get('name')!r} declares no labelled test split "
                              "(eval_split): pass --val-root FOLDER or give the recipe an eval_data section")
    return cls(train_cfg, train=train_augment), test_cls(test_cfg, train=False)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer labels of every item, read without decoding images where the dataset allows."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels, dtype=np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([k for _, k in dataset.samples], dtype=np.int64)
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def indices_hash(indices: Sequence[int] | np.ndarray) -> str:
    """SHA-256 (hex) of the indices as little-endian int64: a fingerprint of a split."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def class_balanced_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset: from every class ``c`` with ``n_c`` samples,
    ``max(1, round(fraction * n_c))`` drawn without replacement.

    Deterministic in (labels, fraction, seed): a NumPy ``default_rng(seed)`` permutes each class
    in ascending class order. Classes keep their proportions (equal counts for balanced data
    such as Fashion-MNIST), and every class has at least one labelled example.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"labels fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    if (labels < 0).any():
        raise ConfigError("labels fraction needs labelled data (found unlabelled items, label -1)")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(idx))))
        chosen.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(chosen))


def select_train(
    train_ds: Dataset,
    labels_fraction: float | None,
    split_seed: int,
    limit_train: int | None,
) -> tuple[Dataset, dict[str, Any]]:
    """The labelled training subset (first ``limit_train`` items, then the fraction split)
    and a record of it for the results JSON."""
    n = len(train_ds) if limit_train is None else min(limit_train, len(train_ds))
    labels = dataset_labels(train_ds)[:n]
    if labels_fraction is None or labels_fraction >= 1.0:
        indices = np.arange(n)
    else:
        indices = class_balanced_split(labels, labels_fraction, split_seed)
    record = {
        "labels_fraction": 1.0 if labels_fraction is None else float(labels_fraction),
        "split_seed": split_seed,
        "train_pool": int(n),
        "num_train": int(len(indices)),
        "indices_sha256": indices_hash(indices),
        "per_class": {str(int(c)): int((labels[indices] == c).sum()) for c in np.unique(labels)},
    }
    return Subset(train_ds, indices.tolist()), record


def head_subset(test_ds: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of the test set (all when None)."""
    if limit is None or limit >= len(test_ds):
        return test_ds
    return Subset(test_ds, list(range(limit)))


def num_classes(*datasets: Dataset) -> int:
    for ds in datasets:
        base = ds.dataset if isinstance(ds, Subset) else ds
        classes = getattr(base, "classes", None)
        if classes:
            return len(classes)
    return int(max(int(dataset_labels(ds).max()) for ds in datasets)) + 1


# ---------------------------------------------------------------------------------------------
# Features


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator()


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Dataset,
    pool: str = "cls",
    batch_size: int = 256,
    accelerator: Any = None,
    n_last_blocks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (:func:`encoder_features` of :func:`eval_encoder`) and labels of a whole
    dataset, in dataset order, on the CPU: (N, D) float32 and (N,) int64. Sharded over
    processes and gathered back."""
    accelerator = accelerator or make_accelerator()
    enc = eval_encoder(model)
    enc.eval().to(accelerator.device)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate))
    feats, labels = [], []
    for batch in loader:
        x = batch["image"].to(accelerator.device)  # (B, C, H, W)
        f = encoder_features(enc, x, pool, n_last_blocks).float()  # (B, D) or (B, K*D)
        y = torch.as_tensor(batch["label"], device=accelerator.device)
        f, y = accelerator.gather_for_metrics((f, y))
        feats.append(f.cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels).long()


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: fraction of rows whose label is among the k best scores
    (k capped by the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels.view(-1, 1)).any(1)
        out[f"top{k}"] = float(hit.float().mean()) if len(labels) else float("nan")
    return out


def common_record(protocol: str, source: Any, init: str, seed: int, model: torch.nn.Module,
                   split: dict[str, Any], n_test: int) -> dict[str, Any]:
    recipe = model.recipe
    return {
        "protocol": protocol,
        "source": str(source),
        "init": init,
        "method": recipe.method,
        "dataset": recipe.data.get("name"),
        "seed": seed,
        **split,
        "num_test": int(n_test),
    }


def finish(record: dict[str, Any], out: str | os.PathLike | None, accelerator: Any = None) -> dict[str, Any]:
    """Print the record as JSON and write it to ``out`` (main process only)."""
    text = json.dumps(record, indent=1, sort_keys=False)
    if accelerator is None or accelerator.is_main_process:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text + "\n")
    return record


def features_for(source: Any, c: Any, pool: str, batch_size: int, n_last_blocks: int = 1):
    """(model, accelerator, split record, number of classes, (train feats, labels, test feats,
    labels)) for a protocol of Config ``c`` (its CommonConfig fields) on ``source``."""
    model = load_source(source, init=c.init, seed=c.seed)
    train_ds, test_ds = eval_datasets(model.recipe, c.val_root)
    train_sub, split = select_train(train_ds, c.labels_fraction, c.split_seed, c.limit_train)
    test_sub = head_subset(test_ds, c.limit_test)
    acc = make_accelerator()
    tr_f, tr_y = extract_features(model, train_sub, pool, batch_size, acc, n_last_blocks)
    te_f, te_y = extract_features(model, test_sub, pool, batch_size, acc, n_last_blocks)
    return model, acc, split, num_classes(train_ds, test_ds), (tr_f, tr_y, te_f, te_y)
