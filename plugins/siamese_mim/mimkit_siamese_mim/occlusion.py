"""The occlusion-invariance analysis (Kong & Zhang, CVPR 2023): ``mim analyze occlusion RUN...``.

For each source's frozen ViT encoder f and the same held-out images x (and the same masks):

    masked(r)    = mean_i cos(pool f(x_i), pool f(x_i with a random fraction r of patches occluded))
    transform(T) = mean_i cos(pool f(x_i), pool f(T(x_i)))        T: flip, crop, color, noise
    others       = mean_i cos(pool f(x_i), pool f(x_{i+1}))        unrelated images: the floor
    normalized   = (s - others) / (1 - others)                    1: invariant, 0: as different as
                                                                   another image

Occlusion ``drop`` removes the hidden patches' tokens before the encoder (MAE's occlusion, as
in pretraining); ``zero`` sets their pixels to 0 (the data mean) and encodes the whole image.
``pool``: ``mean`` of the (visible) patch tokens, or the ``cls`` token. A source is a run
folder, checkpoint or export; ``random:SRC`` is SRC's architecture at a seeded random init
(SRC may also be a recipe file or a preset name). The record (written by the CLI beside the
other evaluations) holds every number; ``summary`` is the printed table; a PNG plot
(invariance vs mask ratio, one line per run) is written to ``plot`` (default: beside the JSON).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mimkit.plugin_api import (
    ConfigError, eval_datasets, gather_tokens, head_subset, load_source, one_of, pyplot, save_figure,
)

TRANSFORMS = ("flip", "crop", "color", "noise")


def _ratios(_inst: Any, _attr: attrs.Attribute, value: list[float]) -> None:
    if not value or any(not 0.0 <= float(r) < 1.0 for r in value):
        raise ValueError(f"ratios must be a non-empty list of numbers in [0, 1), got {value}")


def _transforms(_inst: Any, _attr: attrs.Attribute, value: list[str]) -> None:
    bad = [t for t in value if t not in TRANSFORMS]
    if bad:
        raise ValueError(f"unknown transforms {bad}; allowed: {list(TRANSFORMS)}")


def encode_visible(enc: torch.nn.Module, x: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
    """A timm-ViT ``vit`` encoder on the patches ``ids_keep`` only (all when None), whatever its
    pretraining mode: patch embed + positions -> keep -> [CLS] -> blocks -> norm: (B, P + K, D).
    With every patch kept this is ``forward_features``."""
    vit = enc.vit
    p = enc.num_prefix_tokens
    tokens = vit.patch_embed(x) + vit.pos_embed[:, p:]  # (B, N, D)
    if ids_keep is not None:
        tokens = gather_tokens(tokens, ids_keep)  # (B, K, D)
    if p:
        prefix = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        tokens = torch.cat([prefix, tokens], dim=1)
    tokens = vit.norm_pre(tokens)
    for blk in vit.blocks:
        tokens = blk(tokens)
    return vit.norm(tokens)


def transform(x: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """A fixed photometric or geometric change of normalized images (B, C, H, W)."""
    if name == "flip":
        return x.flip(-1)
    if name == "crop":  # the central 75% of each side, resized back
        h, w = x.shape[-2:]
        dh, dw = round(h * 0.125), round(w * 0.125)
        return F.interpolate(x[..., dh:h - dh, dw:w - dw], size=(h, w), mode="bilinear", align_corners=False)
    if name == "color":  # brightness + contrast jitter, per image
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * 0.7 + mean + 0.3
    if name == "noise":
        return x + 0.2 * torch.randn(x.shape, generator=generator).to(x.device)
    raise ConfigError(f"unknown transform {name!r}; allowed: {list(TRANSFORMS)}")


class OcclusionInvariance:
    """Occlusion invariance of frozen encoders: feature similarity between images and their
    masked versions across mask ratios, beside flips, crops, colour changes and noise."""

    @attrs.define(kw_only=True)
    class Config:
        ratios: list[float] = attrs.field(factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9], validator=_ratios)
        transforms: list[str] = attrs.field(factory=lambda: list(TRANSFORMS), validator=_transforms)
        occlusion: str = attrs.field(default="drop", validator=one_of("drop", "zero"))
        pool: str = attrs.field(default="mean", validator=one_of("mean", "cls"))
        num_images: int = 512
        batch_size: int = 128
        seed: int = 0
        plot: str | None = None

    def __init__(self, config: "OcclusionInvariance.Config"):
        self.config = config

    # -- sources ------------------------------------------------------------------------------

    def _load(self, source: str) -> tuple[torch.nn.Module, str, str]:
        """(model, label, init) for ``PATH`` or ``random:PATH|PRESET``."""
        init, src = ("random", source[len("random:"):]) if source.startswith("random:") else ("pretrained", source)
        path = Path(src)
        if init == "random" and not path.exists():  # a preset name: a one-line recipe file
            tmp = Path(tempfile.mkdtemp()) / f"{src}.yaml"
            tmp.write_text(f"method: {src}\n")
            path = tmp
        if init == "pretrained" and path.suffix in (".yaml", ".yml"):
            init = "random"
        model = load_source(path, init=init, seed=self.config.seed)
        enc = getattr(model, "encoder", None)
        if enc is None or not hasattr(enc, "vit"):
            raise ConfigError(f"occlusion: {source} has no `vit` encoder to analyse")
        label = f"random init ({path.stem})" if init == "random" else path.name
        return model, label, init

    # -- features -----------------------------------------------------------------------------

    def _pool(self, latent: torch.Tensor, enc: torch.nn.Module) -> torch.Tensor:
        p = enc.num_prefix_tokens
        if self.config.pool == "cls" and p:
            return latent[:, 0]
        return latent[:, p:].mean(1)

    @torch.no_grad()
    def _features(self, enc: torch.nn.Module, x: torch.Tensor, ratio: float | None, generator: torch.Generator,
                  name: str | None = None) -> torch.Tensor:
        """Pooled features (B, D) of x: whole (ratio None), occluded at ``ratio``, or transformed."""
        if name is not None:
            return self._pool(encode_visible(enc, transform(x, name, generator), None), enc)
        if ratio is None or ratio == 0.0:
            return self._pool(encode_visible(enc, x, None), enc)
        b, n = x.shape[0], enc.num_patches
        keep = max(1, int(n * (1 - ratio)))  # the official kept-count rule
        ids = torch.rand(b, n, generator=generator).argsort(1)[:, :keep].sort(1).values.to(x.device)  # (B, K)
        if self.config.occlusion == "drop":
            return self._pool(encode_visible(enc, x, ids), enc)
        visible = torch.zeros(b, n, device=x.device).scatter(1, ids, 1.0)  # (B, N), 1 = seen
        gh, gw = enc.grid[1:]
        ph, pw = enc.patch[1:]
        pix = visible.reshape(b, 1, gh, 1, gw, 1).expand(-1, -1, -1, ph, -1, pw).reshape(b, 1, gh * ph, gw * pw)
        return self._pool(encode_visible(enc, x * pix, None), enc)

    def _analyse(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
        c = self.config
        enc = model.encoder.eval()
        out: dict[str, list[torch.Tensor]] = {}
        for start in range(0, images.shape[0], c.batch_size):
            x = images[start:start + c.batch_size]
            ref = self._features(enc, x, None, torch.Generator())
            g = torch.Generator().manual_seed(c.seed * 1000 + start)  # same masks for every run
            for r in c.ratios:
                f = self._features(enc, x, float(r), g)
                out.setdefault(f"r{r}", []).append(F.cosine_similarity(ref, f, dim=-1))
            for name in c.transforms:
                f = self._features(enc, x, None, g, name)
                out.setdefault(name, []).append(F.cosine_similarity(ref, f, dim=-1))
            out.setdefault("others", []).append(F.cosine_similarity(ref, ref.roll(1, 0), dim=-1))
        sims = {k: torch.cat(v) for k, v in out.items()}
        floor = float(sims["others"].mean())

        def stat(v: torch.Tensor) -> dict[str, float]:
            m = float(v.mean())
            return {"cos": round(m, 5), "std": round(float(v.std()), 5),
                    "normalized": round((m - floor) / (1 - floor), 5) if floor < 1 else float("nan")}

        return {"masked": {str(r): stat(sims[f"r{r}"]) for r in c.ratios},
                "transforms": {t: stat(sims[t]) for t in c.transforms},
                "other_images": round(floor, 5)}

    # -- the protocol -------------------------------------------------------------------------

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        runs, images, data_name = [], None, None
        for source in sources:
            model, label, init = self._load(source)
            if images is None:  # the first source's held-out images serve every run
                _, test_ds = eval_datasets(model.recipe)
                subset = head_subset(test_ds, c.num_images)
                images = torch.stack([subset[i]["image"] for i in range(len(subset))]).float()
                data_name = (model.recipe.eval_data or model.recipe.data).get("name")
            enc = model.encoder
            if tuple(images.shape[1:]) != (enc.in_chans, *enc.img_size):
                raise ConfigError(f"occlusion: {source} takes {(enc.in_chans, *enc.img_size)} inputs, "
                                  f"the images are {tuple(images.shape[1:])}; compare runs on the same data")
            runs.append({"source": str(source), "label": label, "init": init, "method": model.recipe.method,
                         **self._analyse(model, images)})
        record = {"protocol": "occlusion", "dataset": data_name, "num_images": int(images.shape[0]),
                  "config": attrs.asdict(c), "runs": runs, "seconds": round(time.perf_counter() - t0, 2)}
        record["summary"] = summary_table(record)
        plot = Path(c.plot) if c.plot else _default_plot(sources[0])
        record["plot"] = str(plot_invariance(record, plot))
        return record


def _default_plot(first: str) -> Path:
    src = Path(first[len("random:"):] if first.startswith("random:") else first)
    folder = src / "eval" if (src / "checkpoints").is_dir() else Path("eval")
    return folder / "occlusion.png"


def summary_table(record: dict[str, Any]) -> str:
    """Two plain-text tables (cosine, then normalized by the other-images floor): one row per run."""
    runs = record["runs"]
    ratios = list(runs[0]["masked"])
    transforms = list(runs[0]["transforms"])
    head = ["run"] + [f"mask {float(r):.2f}" for r in ratios] + transforms
    lines = [f"occlusion invariance on {record['num_images']} {record['dataset']} images "
             f"(occlusion {record['config']['occlusion']}, pool {record['config']['pool']})"]
    for key, title in (("cos", "cosine(f(x), f(T x))"), ("normalized", "normalized: (cos - others) / (1 - others)")):
        rows = [[r["label"]] + [f"{r['masked'][q][key]:.3f}" for q in ratios]
                + [f"{r['transforms'][t][key]:.3f}" for t in transforms] for r in runs]
        extra = ["others"] if key == "cos" else []
        rows = [row + ([f"{r['other_images']:.3f}"] if key == "cos" else []) for row, r in zip(rows, runs)]
        cols = head + extra
        width = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        fmt = lambda row: " | ".join(str(v).ljust(w) for v, w in zip(row, width))
        lines += ["", title, fmt(cols), "-+-".join("-" * w for w in width), *map(fmt, rows)]
    return "\n".join(lines)


def plot_invariance(record: dict[str, Any], path: Path) -> Path:
    """Invariance vs mask ratio, one line per run (cosine and normalized panels)."""
    plt = pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax, ylabel in (("cos", axes[0], "cosine similarity to the unmasked image"),
                            ("normalized", axes[1], "normalized invariance")):
        for run in record["runs"]:
            rs = [float(r) for r in run["masked"]]
            ys = [run["masked"][r][key] for r in run["masked"]]
            ax.plot(rs, ys, marker="o", label=run["label"])
        ax.set_xlabel("mask ratio")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.0, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"occlusion invariance ({record['dataset']}, {record['num_images']} images, "
                 f"occlusion {record['config']['occlusion']}, pool {record['config']['pool']})")
    return save_figure(fig, path)


__all__ = ["OcclusionInvariance", "encode_visible", "transform", "summary_table", "plot_invariance"]
