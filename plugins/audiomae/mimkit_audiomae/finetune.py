"""Audio-MAE fine-tuning: the classifier of the official ``models_vit.py`` and the protocol
``mim eval audio_finetune RUN`` (``main_finetune_as.py`` / ``main_finetune_esc.py``, scaled down).

    fbank (B, 1, T, F) -> the pretrained encoder's patch embedding + position table (official quirk kept)
      -> training only: time + frequency masking of the tokens (``random_masking_2d``): int(T'(1 - t_ratio))
         time columns and int(F'(1 - f_ratio)) mel rows kept, in the official noise order
      -> [CLS] (+ its position) prepended -> blocks (stochastic depth rising to ``drop_path``)
      -> pool "mean": mean of the patch tokens -> fresh ``fc_norm`` (``global_pool``, the official default;
         the encoder's final norm is dropped); pool "cls": final norm -> [CLS]
      -> linear head (weights trunc-normal std 2e-5, as the official fine-tuning script) -> (B, classes)

Augmentation (protocol): the data source's ``roll_mag`` on the waveform (Beta(10, 10) + 0.5 gain; a real
roll with ``roll_mono``, which the official code never applies to mono audio), optional mixup (a random
partner from the batch with probability ``mixup``, lambda ~ Beta(10, 10), soft labels; the official mixes
waveforms in the dataset, here normalized fbanks in the batch) and optional SpecAugment bands
(``freqm``/``timem``: one zeroed band of width U{0..m-1}, as torchaudio's masking, applied in the
normalized domain). Optimizer: AdamW with the official layer-wise lr decay groups (``param_groups_lrd``),
lr = blr x batch / 256, linear warm-up then cosine to ``min_lr``; label-smoothed cross entropy.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader

from mimkit.plugin_api import (
    ConfigError, MimkitError, component, cosine_lr, load_source, one_of, registry, topk_accuracy,
)


def random_masking_2d(tokens: torch.Tensor, grid: tuple[int, int], t_ratio: float, f_ratio: float,
                      noise_t: torch.Tensor, noise_f: torch.Tensor) -> torch.Tensor:
    """Official ``models_vit.VisionTransformer.random_masking_2d``: keep int(T'(1 - t_ratio)) time
    columns, then int(F'(1 - f_ratio)) mel rows, each chosen by the smallest noise values.

    tokens (B, T'*F', D) in (time, freq) raster order; noise_t (B, T'), noise_f (B, F') uniform
    -> (B, keep_t * keep_f, D), kept columns in ascending-noise order, rows likewise within each column.
    """
    b, _, d = tokens.shape
    gt, gf = grid
    keep_t, keep_f = int(gt * (1 - t_ratio)), int(gf * (1 - f_ratio))
    x = tokens.reshape(b, gt, gf, d)
    ids_t = torch.argsort(noise_t, dim=1)[:, :keep_t]  # (B, keep_t)
    x = torch.gather(x, 1, ids_t[:, :, None, None].expand(-1, -1, gf, d))  # (B, keep_t, F', D)
    ids_f = torch.argsort(noise_f, dim=1)[:, :keep_f]  # (B, keep_f)
    x = torch.gather(x, 2, ids_f[:, None, :, None].expand(-1, keep_t, -1, d))  # (B, keep_t, keep_f, D)
    return x.reshape(b, keep_t * keep_f, d)


class AudioClassifier(nn.Module):
    """Official ``models_vit.VisionTransformer`` for audio, from a pretrained ``audio_vit`` encoder."""

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str = "mean", drop_path: float = 0.1,
                 mask_t: float = 0.0, mask_f: float = 0.0):
        super().__init__()
        if not hasattr(encoder, "vit") or getattr(encoder, "num_prefix_tokens", 0) != 1:
            raise MimkitError("audio fine-tuning needs an audio_vit encoder (a ViT with one [CLS] token)")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"pool must be 'mean' or 'cls', got {pool!r}")
        vit = copy.deepcopy(encoder.vit)
        self.patch_embed, self.cls_token, self.pos_embed = vit.patch_embed, vit.cls_token, vit.pos_embed
        self.pos_embed.requires_grad_(False)  # the fixed sin-cos table (official: requires_grad=False)
        self.blocks = vit.blocks
        depth = len(self.blocks)
        for i, blk in enumerate(self.blocks):  # stochastic depth, linspace(0, drop_path, depth)
            rate = drop_path * i / (depth - 1) if depth > 1 else drop_path
            blk.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
            blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()
        dim = encoder.embed_dim
        self.pool = pool
        self.norm = vit.norm if pool == "cls" else nn.Identity()  # global_pool deletes the encoder's norm
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if pool == "mean" else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self.grid = tuple(encoder.grid[1:])  # (T', F')
        self.mask_t, self.mask_f = mask_t, mask_f

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, T, F) -> (B, classes); in train mode with mask_t/mask_f > 0 the tokens are masked."""
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]  # (B, N, D)
        if self.training and (self.mask_t > 0 or self.mask_f > 0):
            b = tokens.shape[0]
            nt = torch.rand(b, self.grid[0], generator=generator).to(tokens.device)
            nf = torch.rand(b, self.grid[1], generator=generator).to(tokens.device)
            tokens = random_masking_2d(tokens, self.grid, self.mask_t, self.mask_f, nt, nf)  # (B, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            h = blk(h)
        if self.pool == "mean":
            feat = self.fc_norm(h[:, 1:].mean(1))
        else:
            feat = self.norm(h)[:, 0]
        return self.head(feat)


def param_groups_lrd(model: AudioClassifier, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """The official ``util/lr_decay.param_groups_lrd``: layer 0 = embeddings and tokens, block i =
    layer i + 1, the rest (norms, head) = depth + 1; lr scale layer_decay ** (depth + 1 - layer);
    1-D parameters and ``pos_embed``/``cls_token`` get no weight decay."""
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        no_decay = p.ndim == 1 or name in model.no_weight_decay()
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - layer)}
        groups[key]["params"].append(p)
    return list(groups.values())


def spec_augment(x: torch.Tensor, freqm: int, timem: int, generator: torch.Generator) -> torch.Tensor:
    """One zeroed band per sample along mel (width U{0..freqm-1}) and one along time (U{0..timem-1}),
    as torchaudio's ``FrequencyMasking``/``TimeMasking`` (applied to normalized fbanks here)."""
    b, _, t, f = x.shape
    x = x.clone()
    for size, m, axis in ((f, freqm, 3), (t, timem, 2)):
        if m <= 0:
            continue
        width = (torch.rand(b, generator=generator) * m).long()  # (B,)
        start = (torch.rand(b, generator=generator) * (size - width)).long()
        idx = torch.arange(size)
        band = (idx[None] >= start[:, None]) & (idx[None] < (start + width)[:, None])  # (B, size)
        shape = (b, 1, size, 1) if axis == 2 else (b, 1, 1, size)
        x = x.masked_fill(band.view(shape).to(x.device), 0.0)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of the official audio loader (per sample with probability ``prob``: a random partner,
    lambda ~ Beta(10, 10)), on a batch of features and one-hot/soft labels (B, C)."""
    b = x.shape[0]
    use = torch.rand(b, generator=generator) < prob
    partner = torch.randint(0, b, (b,), generator=generator)
    lam = torch.distributions.Beta(10.0, 10.0).sample((b,))  # global RNG, seeded by the protocol
    lam = torch.where(use, lam, torch.ones(b)).to(x.device)
    partner = partner.to(x.device)
    xm = lam.view(b, 1, 1, 1) * x + (1 - lam.view(b, 1, 1, 1)) * x[partner]
    ym = lam.view(b, 1) * y + (1 - lam.view(b, 1)) * y[partner]
    return xm, ym


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if "_bad" not in it]
    return torch.utils.data.default_collate(good) if good else {}


def _dataset(spec: dict[str, Any], path: str, train: bool):
    cls, cfg = component("datasets", spec, path, registry())
    return cls(cfg, train=train)


class AudioFinetune:
    """``mim eval audio_finetune RUN``: Audio-MAE fine-tuning of the run's encoder on the labelled
    train split of its audio data (e.g. the flite spoken digits), top-1/top-5 on the test split."""

    @attrs.define(kw_only=True)
    class Config:
        init: str = attrs.field(default="pretrained", validator=one_of("pretrained", "random"))
        seed: int = 0
        epochs: int = 60
        batch_size: int = 32
        blr: float = 1e-3  # lr = blr * batch / 256 (main_finetune_esc default)
        layer_decay: float = 0.75
        weight_decay: float = 0.05
        drop_path: float = 0.1
        warmup_epochs: float = 4.0
        min_lr: float = 1e-6
        pool: str = attrs.field(default="mean", validator=one_of("mean", "cls"))  # mean = global_pool (official)
        mask_t: float = 0.2  # random_masking_2d, the README's 0.2 / 0.2
        mask_f: float = 0.2
        roll_mag: bool = True  # the data source's roll_mag (gain only on mono, as the official)
        roll_mono: bool = False  # really roll mono waveforms
        mixup: float = 0.0  # probability of mixing a sample (official AudioSet 0.5, ESC/SPC 0)
        freqm: int = 0  # SpecAugment band widths (official loader: 48 / 192 on AudioSet)
        timem: int = 0
        smoothing: float = 0.1
        train_data: dict[str, Any] | None = None  # default: the run's data, split train
        test_data: dict[str, Any] | None = None  # default: the run's eval_data, else data split test
        limit_train: int | None = None
        limit_test: int | None = None

    def __init__(self, config: "AudioFinetune.Config"):
        c = config
        for name in ("mask_t", "mask_f"):
            if not 0.0 <= getattr(c, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(c, name)}")
        if not 0.0 <= c.mixup <= 1.0:
            raise ConfigError(f"mixup must be in [0, 1], got {c.mixup}")
        self.config = config

    def record_name(self) -> str:
        return f"audio_finetune_{self.config.init}_seed{self.config.seed}.json"

    def datasets(self, recipe: Any) -> tuple[Any, Any]:
        c = self.config
        data = dict(copy.deepcopy(recipe.data))
        data.pop("limit", None)
        train_spec = dict(c.train_data) if c.train_data else {**data, "split": "train"}
        train_spec.update(roll_mag=c.roll_mag, roll_mono=c.roll_mono)
        if c.test_data:
            test_spec = dict(c.test_data)
        elif recipe.eval_data:
            test_spec = dict(recipe.eval_data)
        else:
            test_spec = {**data, "split": "test"}
        test_spec.pop("limit", None)
        if c.limit_train is not None:
            train_spec["limit"] = c.limit_train
        if c.limit_test is not None:
            test_spec["limit"] = c.limit_test
        return _dataset(train_spec, "train_data", True), _dataset(test_spec, "test_data", False)

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        model = load_source(sources[0], init=c.init, seed=c.seed)
        recipe = model.recipe
        key = getattr(model, "input_key", "audio")
        train_ds, test_ds = self.datasets(recipe)
        classes = len(getattr(train_ds, "classes", []) or []) or int(max(train_ds.labels)) + 1
        torch.manual_seed(c.seed)
        clf = AudioClassifier(model.encoder, classes, c.pool, c.drop_path, c.mask_t, c.mask_f)
        del model
        bs = min(c.batch_size, len(train_ds))
        lr = c.blr * bs / 256
        opt = torch.optim.AdamW(param_groups_lrd(clf, c.weight_decay, c.layer_decay), lr=lr)
        gen = torch.Generator().manual_seed(c.seed)
        loader = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=True, collate_fn=_collate, generator=gen)
        steps_per_epoch = max(1, len(loader))
        total, warmup = c.epochs * steps_per_epoch, int(round(c.warmup_epochs * steps_per_epoch))
        aug = torch.Generator().manual_seed(c.seed + 1)  # masks, mixup partners, SpecAugment bands
        step, last = 0, float("nan")
        curve = []
        for epoch in range(c.epochs):
            clf.train()
            for batch in loader:
                if not batch:
                    continue
                x, y = batch[key], torch.as_tensor(batch["label"]).long()
                if c.freqm or c.timem:
                    x = spec_augment(x, c.freqm, c.timem, aug)
                soft = F.one_hot(y, classes).float()
                if c.mixup > 0:
                    x, soft = mix_batch(x, soft, c.mixup, aug)
                soft = soft * (1 - c.smoothing) + c.smoothing / classes
                cur = cosine_lr(step, lr, warmup, total, c.min_lr)
                for g in opt.param_groups:
                    g["lr"] = cur * g["lr_scale"]
                loss = torch.sum(-soft * F.log_softmax(clf(x, aug), dim=-1), dim=-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = float(loss.detach())
                step += 1
            curve.append(round(last, 4))
        clf.eval()
        scores, labels = [], []
        with torch.no_grad():
            for batch in DataLoader(test_ds, batch_size=64, shuffle=False, collate_fn=_collate):
                if batch:
                    scores.append(clf(batch[key]).float())
                    labels.append(torch.as_tensor(batch["label"]).long())
        s, y = torch.cat(scores), torch.cat(labels)
        acc = topk_accuracy(s, y)
        record = {"protocol": "audio_finetune", "source": str(sources[0]), "init": c.init, "seed": c.seed,
                  "num_train": len(train_ds), "num_test": int(len(y)), "classes": classes, "chance": 1.0 / classes,
                  "epochs": c.epochs, "steps": step, "batch_size": bs, "lr": lr, "pool": c.pool, "mask_t": c.mask_t,
                  "mask_f": c.mask_f, "mixup": c.mixup, "roll_mag": c.roll_mag, "final_train_loss": last,
                  "epoch_losses": curve, **acc, "seconds": round(time.perf_counter() - t0, 2)}
        record["summary"] = (f"audio fine-tune ({c.init}): top-1 {acc['top1']:.4f} top-5 {acc['top5']:.4f} "
                             f"on {len(y)} test clips, chance {1.0 / classes:.3f}")
        return record
