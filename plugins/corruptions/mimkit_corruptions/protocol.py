"""The ``corruption`` protocol and the pieces other robustness protocols reuse.

``mim eval corruption RUN --corruptions all --severity 1-5`` evaluates a classifier run (a
model with ``classify(x) -> logits``, e.g. a ``ttt`` run) on the clean test set and on every
corruption x severity, and reports mean corruption accuracy (mCA: the mean over corruptions
and severities) with a per-corruption table; it also draws the corruptions x severities grid.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mimkit.plugin_api import MimkitError, component, load_source, registry, pyplot, save_figure

from .corruptions import corrupt
from .names import FAMILIES
from .datasets import image_seeds
from .names import parse_corruptions, parse_severities

Predict = Callable[[torch.Tensor], torch.Tensor]  # normalized (B, C, H, W) -> logits (B, K)


def test_spec(recipe: Any) -> dict[str, Any]:
    """The clean test-set spec of a run's recipe (its ``eval_data``, else ``data`` on the test
    split), un-augmented."""
    spec = dict(recipe.eval_data) if getattr(recipe, "eval_data", None) else dict(recipe.data)
    if spec.get("name") == "fashion_mnist":
        spec["split"] = "test"
    if "augment" in attrs.fields_dict(registry().get("datasets", spec["name"]).Config):
        spec["augment"] = False
    spec.pop("limit", None)
    return spec


def shifted_dataset(spec: dict[str, Any], corruption: str | None, severity: int, limit: int | None,
                    seed: int = 0) -> Dataset:
    """The clean test set (``corruption`` None) or its corrupted version: ``fashion_mnist_c``
    when the spec is Fashion-MNIST, else the ``corrupted`` wrapper; the first ``limit`` items."""
    reg = registry()
    if corruption is None:
        full = dict(spec)
    elif spec.get("name") == "fashion_mnist":
        keep = {k: spec[k] for k in ("root", "img_size", "channels") if k in spec}
        full = {"name": "fashion_mnist_c", **keep, "corruption": corruption, "severity": severity, "seed": seed}
        if limit is not None:
            full["limit"] = limit
    else:
        full = {"name": "corrupted", "base": spec, "corruption": corruption, "severity": severity, "seed": seed}
    cls, cfg = component("datasets", full, "eval_data", reg)
    if "limit" in attrs.fields_dict(cls.Config) and limit is not None and corruption is None:
        cfg = attrs.evolve(cfg, limit=limit)
    ds = cls(cfg, train=False)
    if limit is not None and len(ds) > limit:
        ds = Subset(ds, range(limit))
    return ds


@torch.no_grad()
def accuracy(predict: Predict, dataset: Dataset, batch_size: int = 256) -> float:
    correct, n = 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = predict(batch["image"])
        correct += int((logits.argmax(1) == torch.as_tensor(batch["label"])).sum())
        n += len(batch["label"])
    return correct / max(1, n)


def sweep(evaluate: Callable[[Dataset], dict[str, float] | float], spec: dict[str, Any], corruptions: list[str],
          severities: list[int], limit: int | None, seed: int = 0, clean: bool = True,
          log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run ``evaluate(dataset)`` (an accuracy, or a dict of named accuracies) on the clean set and
    on every corruption x severity; returns {"clean": ..., "table": {corruption: {severity: ...}},
    "mean": mean over the table (per name when dicts), "per_family": ...}."""
    def as_dict(v: dict[str, float] | float) -> dict[str, float]:
        return dict(v) if isinstance(v, dict) else {"top1": float(v)}

    out: dict[str, Any] = {}
    if clean:
        out["clean"] = as_dict(evaluate(shifted_dataset(spec, None, 0, limit, seed)))
        if log:
            log(f"clean: {out['clean']}")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for c in corruptions:
        table[c] = {}
        for s in severities:
            t0 = time.perf_counter()
            table[c][str(s)] = as_dict(evaluate(shifted_dataset(spec, c, s, limit, seed)))
            if log:
                log(f"{c} s{s}: {table[c][str(s)]} ({time.perf_counter() - t0:.1f}s)")
    names = list(next(iter(next(iter(table.values())).values())).keys()) if table else []
    mean = {k: sum(v[k] for row in table.values() for v in row.values()) / max(1, len(corruptions) * len(severities))
            for k in names}
    fam = {}
    for f, members in FAMILIES.items():
        rows = [table[c] for c in members if c in table]
        if rows:
            fam[f] = {k: sum(v[k] for r in rows for v in r.values()) / sum(len(r) for r in rows) for k in names}
    per_corruption = {c: {k: sum(v[k] for v in row.values()) / len(row) for k in names} for c, row in table.items()}
    out.update({"table": table, "per_corruption": per_corruption, "per_family": fam, "mean": mean})
    return out


def format_table(result: dict[str, Any], key: str = "top1") -> str:
    """A plain-text table: one row per corruption, one column per severity, and the mean."""
    table = result["table"]
    sev = list(next(iter(table.values())).keys()) if table else []
    lines = [f"{'corruption':18s} " + " ".join(f"s{s:>5s}" for s in sev) + "   mean"]
    for c, row in table.items():
        lines.append(f"{c:18s} " + " ".join(f"{row[s][key]:6.3f}" for s in sev) + f" {result['per_corruption'][c][key]:6.3f}")
    if "clean" in result:
        lines.append(f"{'clean':18s} {result['clean'][key]:6.3f}")
    lines.append(f"{'mean corruption':18s} {result['mean'][key]:6.3f}")
    return "\n".join(lines)


def draw_grid(spec: dict[str, Any], corruptions: list[str], severities: Iterable[int], path: str | Path,
              index: int = 0, seed: int = 0) -> Path:
    """PNG: one row per corruption, columns clean + each severity, for test image ``index``."""
    plt = pyplot()

    severities = list(severities)
    clean = shifted_dataset(spec, None, 0, index + 1, seed)
    x = clean[index]["image"]  # normalized (C, H, W)
    base = getattr(clean, "dataset", clean)
    c = x.shape[0]
    mean = torch.tensor(((getattr(base, "mean", (0.0,)) * c)[:c])).view(c, 1, 1)
    std = torch.tensor(((getattr(base, "std", (1.0,)) * c)[:c])).view(c, 1, 1)
    raw = (x * std + mean).clamp(0, 1)
    fig, axes = plt.subplots(len(corruptions), len(severities) + 1,
                             figsize=(1.3 * (len(severities) + 1), 1.3 * len(corruptions)), squeeze=False)
    for r, name in enumerate(corruptions):
        imgs = [raw] + [corrupt(raw[None], name, s, image_seeds(seed, name, s, [index]))[0] for s in severities]
        for k, img in enumerate(imgs):
            ax = axes[r][k]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if k == 0 else f"s{severities[k - 1]}", fontsize=8)
            if k == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    return save_figure(fig, path, dpi=100)


def classifier_of(model: torch.nn.Module, source: str) -> Predict:
    fn = getattr(model, "classify", None)
    if fn is None:
        raise MimkitError(f"{source}: the {type(model).__name__} model has no classify(x); the corruption protocol "
                          "needs a classifier run (e.g. a `ttt` run); for an encoder, use `mim eval mra_finetune` "
                          "or `ttt_mae`, which train a head first")
    return fn


def eval_dir(source: str) -> Path:
    p = Path(source)
    return p / "eval" if (p / "checkpoints").is_dir() else Path("eval")


class CorruptionProtocol:
    """Accuracy of a classifier run on the clean test set and on its corrupted versions
    (Hendrycks & Dietterich's 15 corruptions); writes a corruptions x severities PNG grid."""

    @attrs.define(kw_only=True)
    class Config:
        corruptions: Any = "all"  # all | a family | names, comma-separated or a list
        severity: Any = "1-5"  # 3 | 1-5 | 1,3,5
        limit: int | None = 1000  # first N test images (None: all 10,000)
        batch_size: int = 256
        seed: int = 0  # the corruption seed (per image: seed, corruption, severity, index)
        grid: bool = True  # draw the corruptions x severities PNG

    def __init__(self, config: "CorruptionProtocol.Config"):
        self.config = config
        self.corruptions = parse_corruptions(config.corruptions)
        self.severities = parse_severities(config.severity)

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        source = sources[0]
        t0 = time.perf_counter()
        model = load_source(source).eval()
        predict = classifier_of(model, source)
        spec = test_spec(model.recipe)
        result = sweep(lambda ds: accuracy(predict, ds, c.batch_size), spec, self.corruptions, self.severities,
                       c.limit, c.seed)
        record: dict[str, Any] = {"protocol": "corruption", "source": str(source), "corruptions": self.corruptions,
                                  "severities": self.severities, "limit": c.limit, "seed": c.seed, **result}
        if c.grid:
            record["grid"] = str(draw_grid(spec, self.corruptions, self.severities,
                                           eval_dir(source) / "corruption_grid.png", seed=c.seed))
        record["seconds"] = round(time.perf_counter() - t0, 1)
        record["text"] = format_table(result)
        record["summary"] = (f"corruption: clean {result['clean']['top1']:.4f}, mean corruption accuracy "
                             f"{result['mean']['top1']:.4f} over {len(self.corruptions)} corruptions x "
                             f"severities {self.severities} ({c.limit} images)\n{record['text']}")
        return record
