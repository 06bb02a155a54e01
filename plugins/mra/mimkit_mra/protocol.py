"""``mim eval mra_finetune RUN --augment mra|none``: fine-tune the run's encoder as a classifier,
with or without the MRA augmentation, and report clean and mean corruption accuracy.

A stand-in until the core's ``mim eval finetune`` (being reshaped) grows an ``--augment`` option:
it reuses the core's public pieces (``classifier_from_encoder``, ``eval_datasets``,
``cosine_lr``) and timm's layer-decay groups, with a lean recipe for CPU minutes (no mixup/cutmix,
label smoothing 0.1). What should move to the core: a batch-transform hook in ``finetune``
(``augment: {name: mra, run: ..., ratio: ..., p: ...}``), applied after the loader's augmentation.
"""
from __future__ import annotations

import time
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mimkit.plugin_api import classifier_from_encoder, cosine_lr, eval_datasets, load_source, one_of

from mimkit_corruptions import accuracy, format_table, parse_corruptions, parse_severities, sweep, test_spec

from .augment import MaskReconstruct


class MRAFinetune:
    """Fine-tune an MAE run's encoder on labels with (``--augment mra``) or without the MRA
    augmentation (a frozen MAE reconstructs the low-attention patches); clean + corruption accuracy."""

    @attrs.define(kw_only=True)
    class Config:
        augment: str = attrs.field(default="mra", validator=one_of("mra", "none"))
        mae_run: str | None = None  # the frozen MAE used by MRA (default: the source run itself)
        ratio: float = 0.5  # fraction of patches hidden and reconstructed (the low-attention ones)
        p: float = 0.5  # probability an image is replaced by its reconstruction
        epochs: int = 3
        limit_train: int | None = 5000
        batch_size: int = 64
        blr: float = 1e-3
        layer_decay: float = 0.75
        weight_decay: float = 0.05
        drop_path: float = 0.1
        smoothing: float = 0.1
        warmup_epochs: float = 0.5
        corruptions: Any = "all"
        severity: Any = "3"
        limit_test: int | None = 1000
        seed: int = 0

    def __init__(self, config: "MRAFinetune.Config"):
        self.config = config
        self.corruptions = parse_corruptions(config.corruptions)
        self.severities = parse_severities(config.severity)

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        from timm.optim import param_groups_layer_decay

        c = self.config
        t0 = time.perf_counter()
        source = sources[0]
        model = load_source(source)
        train_ds, test_ds = eval_datasets(model.recipe, train_augment=True)
        classes = len(getattr(train_ds, "classes", None) or range(10))
        n = len(train_ds) if c.limit_train is None else min(c.limit_train, len(train_ds))
        train_sub = Subset(train_ds, range(n))
        mra = MaskReconstruct(c.mae_run or model, c.ratio, c.p, seed=c.seed) if c.augment == "mra" else None
        torch.manual_seed(c.seed)
        clf = classifier_from_encoder(model, classes, c.drop_path)
        bs = min(c.batch_size, n)
        lr = c.blr * bs / 256
        groups = param_groups_layer_decay(clf, weight_decay=c.weight_decay, no_weight_decay_list=clf.no_weight_decay(),
                                          layer_decay=c.layer_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
        loader = DataLoader(train_sub, batch_size=bs, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(c.seed))
        total = c.epochs * len(loader)
        warmup = int(c.warmup_epochs * len(loader))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=c.smoothing)
        step, last = 0, float("nan")
        for _ in range(c.epochs):
            clf.train()
            for batch in loader:
                x, y = batch["image"], torch.as_tensor(batch["label"])
                if mra is not None:
                    x = mra(x)
                cur = cosine_lr(step, lr, warmup, total, 1e-6)
                for g in opt.param_groups:
                    g["lr"] = cur * g.get("lr_scale", 1.0)
                loss = loss_fn(clf(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = float(loss.detach())
                step += 1
        clf.eval()
        train_s = time.perf_counter() - t0
        spec = test_spec(model.recipe)
        result = sweep(lambda ds: accuracy(clf, ds), spec, self.corruptions, self.severities, c.limit_test, c.seed)
        record: dict[str, Any] = {
            "protocol": "mra_finetune", "source": str(source), "config": attrs.asdict(c), "num_train": n,
            "steps": step, "lr": lr, "final_train_loss": last, "train_seconds": round(train_s, 1), **result,
            "seconds": round(time.perf_counter() - t0, 1)}
        record["text"] = format_table(result)
        record["summary"] = (f"mra_finetune (augment {c.augment}): clean {result['clean']['top1']:.4f}, mean corruption "
                             f"accuracy {result['mean']['top1']:.4f} (severity {self.severities}, {c.limit_test} "
                             f"test images)\n{record['text']}")
        return record
