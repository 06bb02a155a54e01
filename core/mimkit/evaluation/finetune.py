"""MAE's end-to-end fine-tuning (He et al. 2022, facebookresearch/mae ``main_finetune.py``):
global average pooling + ``fc_norm``, layer-wise lr decay, drop path, mixup/cutmix with label
smoothing, AdamW, warmup + cosine."""
from __future__ import annotations

import os
import time
from functools import partial
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import SeededDataset, collate
from ..errors import CheckpointError
from ..schedules import warmup_cosine as cosine_lr
from .common import (
    CommonConfig, common_record, eval_datasets, eval_encoder, finish, head_subset, load_source, make_accelerator,
    num_classes, protocol_config, record_name, select_train, topk_accuracy,
)


def classifier_from_encoder(model: torch.nn.Module, num_classes: int, drop_path: float = 0.1) -> nn.Module:
    """A timm VisionTransformer classifier with the weights of the model's evaluation encoder
    (``model.eval_encoder`` when defined, else its ``vit`` encoder): global average pooling
    of the patch tokens, ``fc_norm`` (fresh) instead of the final ``norm``, a new head
    (weights N(0, 2e-5) truncated, as MAE), ``drop_path`` stochastic depth."""
    import timm

    enc = eval_encoder(model)
    cfg = enc.config
    kwargs = timm_kwargs(enc)
    if getattr(cfg, "norm_eps", None) is not None:  # e.g. 1e-12 of a Hugging Face import
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=cfg.norm_eps)
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


def finetune(source: str | os.PathLike, *, out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """MAE end-to-end fine-tuning of the source's encoder (or of a random init), evaluated on
    the test split (top-1 / top-5) after the last epoch.

    lr = blr * batch * processes / 256; AdamW(0.9, 0.999) on timm's
    ``param_groups_layer_decay`` groups (lr scale ``layer_decay ** (depth + 1 - layer)``, no
    decay on 1-D params and tokens); mixup/cutmix with label smoothing via ``timm.data.Mixup``
    and ``SoftTargetCrossEntropy`` (plain smoothed CE when both alphas are 0). Augmentation is
    the recipe's RandomResizedCrop + flip, at ``crop_scale`` when given, on the plain images of a
    view-making source such as two_views (MAE adds RandAugment and random erasing: not here).
    Starts from ``model.eval_encoder`` when the model defines one (iBOT/AttMask: the teacher).

    ``options`` are the fields of :class:`FineTune.Config` (``epochs``, ``batch_size``, ``blr``,
    ``layer_decay``, ... and the common ones), with its defaults: the same as ``mim eval
    finetune --help`` lists.
    """
    return FineTune(protocol_config(FineTune, options, "finetune"))([source], out=out)


def _finetune(source: str | os.PathLike, c: "FineTune.Config", out: str | os.PathLike | None) -> dict[str, Any]:
    init, seed, labels_fraction, split_seed = c.init, c.seed, c.labels_fraction, c.split_seed
    limit_train, limit_test, val_root = c.limit_train, c.limit_test, c.val_root
    epochs, batch_size, blr, layer_decay, weight_decay = c.epochs, c.batch_size, c.blr, c.layer_decay, c.weight_decay
    drop_path, warmup_epochs, min_lr = c.drop_path, c.warmup_epochs, c.min_lr
    mixup, cutmix, smoothing, augment, clip_grad = c.mixup, c.cutmix, c.smoothing, c.augment, c.clip_grad

    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import param_groups_layer_decay

    t0 = time.perf_counter()
    accelerator = make_accelerator()
    model = load_source(source, init=init, seed=seed)
    train_ds, test_ds = eval_datasets(model.recipe, val_root, train_augment=augment, crop_scale=c.crop_scale)
    train_sub, split = select_train(train_ds, labels_fraction, split_seed, limit_train)
    test_sub = head_subset(test_ds, limit_test)
    n_cls = num_classes(train_ds, test_ds)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # Mixup draws its lambdas from NumPy
    clf = classifier_from_encoder(model, n_cls, drop_path)
    base_record = common_record("finetune", source, init, seed, model, split, 0)
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
    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=n_cls) if use_mix else None
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
        "smoothing": smoothing, "augment": augment, **_train_data(train_ds),
        "final_train_loss": last_loss,
        **topk_accuracy(scores_t, labels_t),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    record["summary"] = f"finetune: top-1 {record['top1']:.4f}  top-5 {record['top5']:.4f}"
    return finish(record, out, accelerator)


def _train_data(ds: Any) -> dict[str, Any]:
    """The fine-tuning training data (its dataset class and crop scale), so records can be compared."""
    crop = getattr(getattr(ds, "config", None), "crop_scale", None)
    return {"train_dataset": type(ds).__name__, "crop_scale": None if crop is None else [float(v) for v in crop]}


class FineTune:
    """MAE's end-to-end fine-tuning (layer decay, drop path, mixup/cutmix, AdamW, warmup + cosine)."""

    @attrs.define(kw_only=True)
    class Config(CommonConfig):
        epochs: int = 100
        batch_size: int = 64
        blr: float = 5e-4  # lr = blr * batch * processes / 256
        layer_decay: float = 0.75
        weight_decay: float = 0.05
        drop_path: float = 0.1
        warmup_epochs: float = 5.0
        min_lr: float = 1e-6
        mixup: float = 0.8
        cutmix: float = 1.0
        smoothing: float = 0.1
        augment: bool = True
        crop_scale: tuple[float, float] | None = None  # RandomResizedCrop scale; None: the recipe's data
        clip_grad: float | None = None

    def __init__(self, config: "FineTune.Config"):
        self.config = config

    def record_name(self) -> str:
        return record_name("finetune", self.config)

    def __call__(self, sources: list[str], out: str | os.PathLike | None = None) -> dict[str, Any]:
        return _finetune(sources[0], self.config, out)
