"""``mim eval zeroshot RUN``: classify with prompts built from class names (CLIP / FLIP protocol).

    class c -> [template.format(name_c) for template in templates] -> text tower -> L2-normalize
            -> mean over templates (prompt ensembling) -> L2-normalize       (C, D)
    image   -> image tower (no masking) -> L2-normalize                      (M, D)
    scores = image @ classes^T -> top-1 / top-5 against the labels

FLIP's evaluation averages the normalized template embeddings and renormalizes (``train.py``,
``encoded_tags.mean(axis=1)``, then / (norm + 1e-8)), with CLIP's seven short ImageNet templates
by default - the default here too. The model must offer ``encode_image(x) -> (B, D)`` and
``encode_text(list[str]) -> (B, D)``, both L2-normalized (the FLIP plugin's model does).
"""
from __future__ import annotations

import time
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Subset

from mimkit.plugin_api import ConfigError, MimkitError, component, load, one_of, registry

#: CLIP's short ImageNet templates, FLIP's default (``vocab/class_names.py``, "short").
SHORT_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                   "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
EMOJI_TEMPLATES = ("an emoji of {}.", "{}.", "an emoji from the {} category.")


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, names: list[str] | tuple[str, ...], templates: list[str] | tuple[str, ...],
                     ensemble: bool = True) -> torch.Tensor:
    """(C, D) normalized class embeddings; ``ensemble`` averages over templates, else the first."""
    use = list(templates) if ensemble else list(templates[:1])
    rows = []
    for name in names:
        z = model.encode_text([t.format(name) for t in use])  # (T, D), normalized
        z = z.float().mean(0)
        rows.append(z / (z.norm() + 1e-8))
    return torch.stack(rows)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([it["image"] for it in items]),
            "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long)}


class ZeroShot:
    """Zero-shot top-1/top-5 of an image-text model on a labelled set, from class-name prompts."""

    @attrs.define(kw_only=True)
    class Config:
        dataset: str = attrs.field(default="run", validator=one_of("run", "fashion_mnist", "noto_emoji", "tuxpaint_stamps"))
        templates: list[str] | None = None  # default: CLIP's short templates (emoji: emoji ones)
        ensemble: bool = True
        limit: int | None = None  # the first N test items
        batch_size: int = 256
        root: str | None = None  # data root for noto_emoji / tuxpaint_stamps

    def __init__(self, config: "ZeroShot.Config"):
        self.config = config

    def dataset(self, model: torch.nn.Module) -> Any:
        c, reg = self.config, registry()
        enc = model.encoder
        size, chans = int(enc.img_size[0]), int(enc.in_chans)
        if c.dataset == "run":
            spec = dict(model.recipe.eval_data or {**model.recipe.data, "split": "test"})
        elif c.dataset == "fashion_mnist":
            spec = {"name": "fashion_mnist_captions", "split": "test", "img_size": size, "channels": chans}
        else:
            spec = {"name": c.dataset, "split": "test", "img_size": size}
            if c.root:
                spec["root"] = c.root
        spec.pop("limit", None)
        if "augment" in attrs.fields_dict(reg.get("datasets", spec["name"]).Config):
            spec["augment"] = False
        cls, cfg = component("datasets", spec, "zeroshot.dataset", reg)
        ds = cls(cfg, train=False)
        if not getattr(ds, "class_names", None):
            raise ConfigError(f"zeroshot: dataset {spec['name']!r} has no class names to build prompts from")
        return ds

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        if len(sources) != 1:
            raise ConfigError(f"zeroshot takes one run folder or checkpoint, got {len(sources)}")
        t0 = time.perf_counter()
        model = load(sources[0])
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
            raise MimkitError(f"{sources[0]}: the model ({type(model).__name__}) has no image and text towers "
                              "(encode_image / encode_text); zero-shot needs an image-text model such as FLIP")
        ds = self.dataset(model)
        if c.limit is not None:
            ds_eval = Subset(ds, range(min(c.limit, len(ds))))
        else:
            ds_eval = ds
        templates = list(c.templates) if c.templates else list(EMOJI_TEMPLATES if c.dataset == "noto_emoji" else SHORT_TEMPLATES)
        if any("{}" not in t for t in templates):
            raise ConfigError(f"zeroshot.templates: every template needs a '{{}}' for the class name, got {templates}")
        names = list(ds.class_names)
        classes = class_embeddings(model, names, templates, c.ensemble)  # (C, D)
        chans = int(model.encoder.in_chans)
        scores, labels = [], []
        with torch.no_grad():
            for batch in DataLoader(ds_eval, batch_size=c.batch_size, shuffle=False, collate_fn=_collate):
                x = batch["image"]
                if x.shape[1] != chans:  # RGB data for a 1-channel model (or gray for RGB)
                    x = x.mean(1, keepdim=True) if chans == 1 else x.expand(-1, chans, -1, -1)
                scores.append(model.encode_image(x).float() @ classes.t())  # (B, C)
                labels.append(batch["label"])
        s, y = torch.cat(scores), torch.cat(labels)
        acc = {}
        for k in (1, 5):
            kk = min(k, s.shape[1])
            acc[f"top{k}"] = float((s.topk(kk, dim=1).indices == y[:, None]).any(1).float().mean())
        name = type(ds).__name__
        rec = {"protocol": "zeroshot", "source": str(sources[0]), "method": getattr(model.recipe, "method", None),
               "dataset": name, "num_test": int(len(y)), "num_classes": len(names), "classes": names,
               "templates": templates if c.ensemble else templates[:1], "ensemble": c.ensemble, **acc,
               "chance": 1.0 / len(names), "seconds": round(time.perf_counter() - t0, 2)}
        rec["summary"] = (f"zeroshot {name}: top-1 {acc['top1']:.4f}  top-5 {acc['top5']:.4f}  "
                          f"({len(y)} images, {len(names)} classes, chance {1 / len(names):.3f}, "
                          f"{len(rec['templates'])} templates)")
        return rec
