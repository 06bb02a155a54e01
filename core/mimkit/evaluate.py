"""Evaluation of a pretrained encoder: weighted k-NN, linear probing and fine-tuning.

The three protocols of the MAE family, under Hugging Face Accelerate (one CPU, one GPU, or
several processes with ``accelerate launch``):

* :func:`knn` - weighted k-NN on frozen, L2-normalized features (DINO's ``eval_knn``: k=20,
  T=0.07, cosine similarity, each neighbour votes for its class with weight exp(sim / T)).
* :func:`linprobe` - MAE's linear probe: frozen encoder, ``BatchNorm1d(affine=False, eps=1e-6)``
  then a linear layer, SGD (or LARS) with linear warmup + cosine. The features carry no
  augmentation, so they are extracted once and the probe trains on the cached tensors (fast on CPU).
* :func:`finetune` - MAE's fine-tuning: global average pooling + ``fc_norm``, layer-wise lr
  decay, drop path, mixup/cutmix with label smoothing, AdamW, warmup + cosine.

Every protocol can run on a labelled fraction (``labels_fraction``) chosen by
:func:`class_balanced_split`, a deterministic function of (labels, fraction, seed); the
result records the seed and a SHA-256 of the chosen indices so that tables can be audited.
``init="random"`` gives the randomly initialized baseline of the same architecture.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .api import build_model, load
from .config import Recipe, component, resolve
from .data import SeededDataset, collate
from .errors import CheckpointError, ConfigError, MimkitError
from .plugins import registry as get_registry


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


# ---------------------------------------------------------------------------------------------
# Data


def eval_datasets(
    recipe: Recipe,
    val_root: str | None = None,
    train_augment: bool = False,
) -> tuple[Dataset, Dataset]:
    """(train, test) datasets of the recipe's data source, both un-augmented unless
    ``train_augment`` (fine-tuning).

    Train is ``recipe.data`` with ``split: train`` (where the source has splits). Test is
    ``recipe.eval_data`` when the recipe names one, else ``recipe.data`` with ``split: test``
    (fashion_mnist), or with ``root: val_root`` (image_folder; ``val_root`` required).
    """
    reg = get_registry()
    train_spec = dict(recipe.data)
    if train_spec.get("name") == "fashion_mnist":
        train_spec["split"] = "train"
        train_spec.pop("limit", None)
    if val_root is not None:
        test_spec = {**train_spec, "root": str(val_root)}
    elif recipe.eval_data is not None:
        test_spec = dict(recipe.eval_data)
    elif train_spec.get("name") == "fashion_mnist":
        test_spec = {**train_spec, "split": "test"}
    else:
        raise ConfigError(f"data source {train_spec.get('name')!r} has no test split: pass --val-root FOLDER")
    if test_spec.get("name") == "fashion_mnist":
        test_spec.pop("limit", None)
    cls, cfg = component("datasets", train_spec, "data", reg)
    train_ds = cls(cfg, train=train_augment)
    cls, cfg = component("datasets", test_spec, "eval_data", reg)
    test_ds = cls(cfg, train=False)
    return train_ds, test_ds


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


def _num_classes(*datasets: Dataset) -> int:
    for ds in datasets:
        base = ds.dataset if isinstance(ds, Subset) else ds
        classes = getattr(base, "classes", None)
        if classes:
            return len(classes)
    return int(max(int(dataset_labels(ds).max()) for ds in datasets)) + 1


# ---------------------------------------------------------------------------------------------
# Features


def _accelerator():
    from accelerate import Accelerator

    return Accelerator()


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Dataset,
    pool: str = "cls",
    batch_size: int = 256,
    accelerator: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and labels of a whole dataset, in dataset order, on the CPU:
    (N, D) float32 and (N,) int64. Sharded over processes and gathered back."""
    accelerator = accelerator or _accelerator()
    enc = vit_encoder(model)
    enc.eval().to(accelerator.device)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate))
    feats, labels = [], []
    for batch in loader:
        x = batch["image"].to(accelerator.device)  # (B, C, H, W)
        f = enc.pool(enc.forward_features(x), pool).float()  # (B, D)
        y = torch.as_tensor(batch["label"], device=accelerator.device)
        f, y = accelerator.gather_for_metrics((f, y))
        feats.append(f.cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels).long()


# ---------------------------------------------------------------------------------------------
# k-NN


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of weighted k-NN (DINO): (M, C).

    Features are L2-normalized; each of the ``k`` most cosine-similar training samples adds
    ``exp(sim / temperature)`` to its class's score.
    """
    train = nn.functional.normalize(train_feats.float(), dim=1)  # (N, D)
    test = nn.functional.normalize(test_feats.float(), dim=1)  # (M, D)
    k = min(k, train.shape[0])
    out = []
    for s in range(0, test.shape[0], chunk):
        sim = test[s : s + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (m, C)
        out.append(votes)
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: fraction of rows whose label is among the k best scores
    (k capped by the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels.view(-1, 1)).any(1)
        out[f"top{k}"] = float(hit.float().mean()) if len(labels) else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# Linear probe


class LinearProbe(nn.Module):
    """MAE's probe head: ``BatchNorm1d(affine=False, eps=1e-6)`` then a linear classifier
    (weights N(0, 0.01) truncated, zero bias). The parameter-free BN whitens the features,
    which matters for MAE whose features are not linearly-normalized."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.fc(self.bn(x))


class LARS(torch.optim.Optimizer):
    """LARS (You et al.) as in MAE's linear probe: SGD with momentum whose update for every
    parameter with more than one dimension is scaled by ``trust * ||w|| / ||g + wd w||``;
    biases and norms take plain SGD steps without weight decay."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0.0, torch.where(un > 0, g["trust_coefficient"] * pn / un, 1.0), 1.0)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def cosine_lr(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak`` then half-cycle cosine down to ``min_lr`` (per step)."""
    if step < warmup_steps:
        return peak * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 256,
    blr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    optimizer: str = "sgd",
    seed: int = 0,
) -> LinearProbe:
    """Fit :class:`LinearProbe` on cached features: (N, D), (N,) -> the trained probe (eval
    mode). lr = blr * batch / 256 (MAE's scaling rule), per-step warmup + cosine."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, d = train_feats.shape
    batch_size = max(2, min(batch_size, n))  # BatchNorm needs > 1 sample per batch
    probe = LinearProbe(d, num_classes)
    lr = blr * batch_size / 256
    if optimizer == "lars":
        opt: torch.optim.Optimizer = LARS(probe.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ConfigError(f"linear probe optimizer must be 'sgd' or 'lars', got {optimizer!r}")
    steps_per_epoch = max(1, n // batch_size)
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss()
    probe.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, lr, warmup, total)
            loss = loss_fn(probe(train_feats[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval()


# ---------------------------------------------------------------------------------------------
# Protocols


def _common_record(protocol: str, source: Any, init: str, seed: int, model: torch.nn.Module,
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


def _finish(record: dict[str, Any], out: str | os.PathLike | None, accelerator: Any = None) -> dict[str, Any]:
    """Print the record as JSON and write it to ``out`` (main process only)."""
    text = json.dumps(record, indent=1, sort_keys=False)
    if accelerator is None or accelerator.is_main_process:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text + "\n")
    return record


def _features_for(source, init, seed, pool, labels_fraction, split_seed, limit_train, limit_test_n, val_root,
                  batch_size):
    model = load_source(source, init=init, seed=seed)
    train_ds, test_ds = eval_datasets(model.recipe, val_root)
    train_sub, split = select_train(train_ds, labels_fraction, split_seed, limit_train)
    test_sub = head_subset(test_ds, limit_test_n)
    accelerator = _accelerator()
    tr_f, tr_y = extract_features(model, train_sub, pool, batch_size, accelerator)
    te_f, te_y = extract_features(model, test_sub, pool, batch_size, accelerator)
    return model, accelerator, split, _num_classes(train_ds, test_ds), (tr_f, tr_y, te_f, te_y)


def knn(
    source: str | os.PathLike,
    *,
    k: int = 20,
    temperature: float = 0.07,
    pool: str = "cls",
    init: str = "pretrained",
    seed: int = 0,
    labels_fraction: float | None = None,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_root: str | None = None,
    batch_size: int = 256,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Weighted k-NN accuracy of the source's frozen features; returns (and writes) the record."""
    t0 = time.perf_counter()
    model, acc, split, c, (tr_f, tr_y, te_f, te_y) = _features_for(
        source, init, seed, pool, labels_fraction, split_seed, limit_train, limit_test, val_root, batch_size)
    scores = knn_predict(tr_f, tr_y, te_f, c, k=k, temperature=temperature)
    record = _common_record("knn", source, init, seed, model, split, len(te_y))
    record.update({"k": k, "temperature": temperature, "pool": pool, **topk_accuracy(scores, te_y),
                   "seconds": round(time.perf_counter() - t0, 2)})
    return _finish(record, out, acc)


def linprobe(
    source: str | os.PathLike,
    *,
    pool: str = "cls",
    init: str = "pretrained",
    seed: int = 0,
    labels_fraction: float | None = None,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_root: str | None = None,
    epochs: int = 90,
    batch_size: int = 256,
    blr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    optimizer: str = "sgd",
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """MAE linear-probe accuracy (features extracted once, without augmentation)."""
    t0 = time.perf_counter()
    model, acc, split, c, (tr_f, tr_y, te_f, te_y) = _features_for(
        source, init, seed, pool, labels_fraction, split_seed, limit_train, limit_test, val_root, batch_size)
    probe = train_linear_probe(tr_f, tr_y, c, epochs=epochs, batch_size=batch_size, blr=blr,
                               weight_decay=weight_decay, warmup_epochs=min(warmup_epochs, epochs),
                               optimizer=optimizer, seed=seed)
    with torch.no_grad():
        scores = probe(te_f)
        train_top1 = topk_accuracy(probe(tr_f), tr_y, (1,))["top1"]
    record = _common_record("linprobe", source, init, seed, model, split, len(te_y))
    record.update({"pool": pool, "epochs": epochs, "batch_size": batch_size, "blr": blr, "optimizer": optimizer,
                   "weight_decay": weight_decay, "train_top1": train_top1, **topk_accuracy(scores, te_y),
                   "seconds": round(time.perf_counter() - t0, 2)})
    return _finish(record, out, acc)


def classifier_from_encoder(model: torch.nn.Module, num_classes: int, drop_path: float = 0.1) -> nn.Module:
    """A timm VisionTransformer classifier with the encoder's weights: global average pooling
    of the patch tokens, ``fc_norm`` (fresh) instead of the final ``norm``, a new head
    (weights N(0, 2e-5) truncated, as MAE), ``drop_path`` stochastic depth."""
    import timm

    enc = vit_encoder(model)
    cfg = enc.config
    kwargs = timm_kwargs(enc)
    clf = timm.create_model(cfg.model, pretrained=False, num_classes=num_classes, global_pool="avg",
                            drop_path_rate=drop_path, **kwargs)
    state = {k: v for k, v in enc.vit.state_dict().items()}
    result = clf.load_state_dict(state, strict=False)
    allowed_missing = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    if set(result.missing_keys) - allowed_missing or set(result.unexpected_keys) - {"norm.weight", "norm.bias"}:
        raise CheckpointError(f"encoder does not fit the classifier: missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys}")
    nn.init.trunc_normal_(clf.head.weight, std=2e-5)
    nn.init.zeros_(clf.head.bias)
    return clf


def timm_kwargs(enc: torch.nn.Module) -> dict[str, Any]:
    """The size keyword arguments that rebuild the encoder's ViT with ``timm.create_model``."""
    vit = enc.vit
    h, w = enc.img_size
    kwargs: dict[str, Any] = {
        "img_size": h if h == w else [h, w],
        "patch_size": enc.patch[1] if enc.patch[1] == enc.patch[2] else [enc.patch[1], enc.patch[2]],
        "in_chans": enc.in_chans,
        "embed_dim": enc.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": vit.blocks[0].attn.num_heads,
    }
    if enc.config.mlp_ratio is not None:
        kwargs["mlp_ratio"] = enc.config.mlp_ratio
    return kwargs


def finetune(
    source: str | os.PathLike,
    *,
    init: str = "pretrained",
    seed: int = 0,
    labels_fraction: float | None = None,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_root: str | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    blr: float = 5e-4,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    drop_path: float = 0.1,
    warmup_epochs: float = 5.0,
    min_lr: float = 1e-6,
    mixup: float = 0.8,
    cutmix: float = 1.0,
    smoothing: float = 0.1,
    augment: bool = True,
    clip_grad: float | None = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """MAE end-to-end fine-tuning of the source's encoder (or of a random init), evaluated on
    the test split (top-1 / top-5) after the last epoch.

    lr = blr * batch * processes / 256; AdamW(0.9, 0.999) on timm's
    ``param_groups_layer_decay`` groups (lr scale ``layer_decay ** (depth + 1 - layer)``, no
    decay on 1-D params and tokens); mixup/cutmix with label smoothing via ``timm.data.Mixup``
    and ``SoftTargetCrossEntropy`` (plain smoothed CE when both alphas are 0). Augmentation is
    the recipe's RandomResizedCrop + flip (MAE adds RandAugment and random erasing: not here).
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import param_groups_layer_decay

    t0 = time.perf_counter()
    accelerator = _accelerator()
    model = load_source(source, init=init, seed=seed)
    train_ds, test_ds = eval_datasets(model.recipe, val_root, train_augment=augment)
    train_sub, split = select_train(train_ds, labels_fraction, split_seed, limit_train)
    test_sub = head_subset(test_ds, limit_test)
    c = _num_classes(train_ds, test_ds)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # Mixup draws its lambdas from NumPy
    clf = classifier_from_encoder(model, c, drop_path)
    base_record = _common_record("finetune", source, init, seed, model, split, 0)
    del model  # the decoder is not needed any more

    world = accelerator.num_processes
    per_proc = max(2, min(batch_size, len(train_sub) // world) // 2 * 2)  # mixup needs an even batch
    eff_batch = per_proc * world
    lr = blr * eff_batch / 256
    groups = param_groups_layer_decay(clf, weight_decay=weight_decay, no_weight_decay_list=clf.no_weight_decay(),
                                      layer_decay=layer_decay)
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    seeded = SeededDataset(train_sub, seed)
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(seeded, batch_size=eff_batch, shuffle=True, drop_last=True, collate_fn=collate,
                              generator=gen)
    test_loader = DataLoader(test_sub, batch_size=256, shuffle=False, collate_fn=collate)
    clf, opt, train_loader, test_loader = accelerator.prepare(clf, opt, train_loader, test_loader)
    use_mix = mixup > 0 or cutmix > 0
    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=c) if use_mix else None
    loss_fn = SoftTargetCrossEntropy() if use_mix else (
        LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss())
    steps_per_epoch = max(1, len(train_loader))
    total, warmup = int(epochs * steps_per_epoch), int(round(warmup_epochs * steps_per_epoch))
    step, last_loss = 0, float("nan")
    for epoch in range(epochs):
        seeded.set_epoch(epoch)
        clf.train()
        for batch in train_loader:
            x, y = batch["image"], torch.as_tensor(batch["label"], device=accelerator.device)  # (B, C, H, W), (B,)
            cur = cosine_lr(step, lr, warmup, total, min_lr)
            for g in opt.param_groups:
                g["lr"] = cur * g.get("lr_scale", 1.0)
            if mixer is not None:
                x, y = mixer(x, y)  # y: (B, C) soft targets
            loss = loss_fn(clf(x), y)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if clip_grad is not None:
                accelerator.clip_grad_norm_(clf.parameters(), clip_grad)
            opt.step()
            last_loss = float(loss.detach())
            step += 1
    clf.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in test_loader:
            logits = clf(batch["image"])  # (B, C)
            y = torch.as_tensor(batch["label"], device=accelerator.device)
            logits, y = accelerator.gather_for_metrics((logits, y))
            scores.append(logits.float().cpu())
            labels.append(y.cpu())
    scores_t, labels_t = torch.cat(scores), torch.cat(labels)
    record = {
        **base_record,
        "num_test": int(len(labels_t)),
        "epochs": epochs, "steps": step, "batch_size": eff_batch, "lr": lr, "blr": blr, "layer_decay": layer_decay,
        "weight_decay": weight_decay, "drop_path": drop_path, "mixup": mixup, "cutmix": cutmix,
        "smoothing": smoothing, "augment": augment, "final_train_loss": last_loss,
        **topk_accuracy(scores_t, labels_t),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return _finish(record, out, accelerator)
