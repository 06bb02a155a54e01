"""``mim eval igpt_layers RUN``: a linear probe on every layer's average-pooled features.

iGPT's finding: the best linear-probe features sit in the middle of the network, not at its
end (the last layers specialize in predicting the next pixel). This protocol extracts, in one
forward pass per batch, the average-pooled normalized hidden states of every requested layer
(0 = the input embeddings) for the training and test images, fits the core's linear probe
(``BatchNorm1d`` without affine + linear, SGD, warmup + cosine) on each, and draws accuracy by
layer as a PNG, with the same architecture at random initialization as the baseline (it keeps
the pretrained palette, so both read the same tokens).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from mimkit.plugin_api import (
    ConfigError, eval_datasets, head_subset, load_source, one_of, pyplot, save_figure, select_train, topk_accuracy,
    train_linear_probe,
)

from .model import IGPT


@torch.no_grad()
def layer_features(model: IGPT, dataset: Any, layers: list[int], batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(len(layers), N, D) pooled features and (N,) labels of a dataset, in order."""
    enc = model.encoder.eval().to(device)
    feats, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        feats.append(enc.layer_features(batch["image"].to(device), layers).float().cpu())
        labels.append(torch.as_tensor(batch["label"]))
    return torch.cat(feats, 1), torch.cat(labels).long()


def plot_layers(curves: dict[str, dict[int, float]], path: str | Path, title: str = "") -> Path:
    """Top-1 accuracy against layer, one line per initialization."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, acc in curves.items():
        xs = sorted(acc)
        ax.plot(xs, [acc[x] for x in xs], "o-", label=name, ms=4)
        best = max(xs, key=lambda x: acc[x])
        ax.annotate(f"{acc[best]:.3f}", (best, acc[best]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.set_xlabel("layer (0 = input embeddings)")
    ax.set_ylabel("linear-probe top-1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "linear probe by layer", fontsize=8)
    return save_figure(fig, path)


class LayerSweep:
    """Linear-probe accuracy of every layer's average-pooled features (iGPT), plotted by layer."""

    @attrs.define(kw_only=True)
    class Config:
        layers: list[int] | None = None  # default: 0 .. n_layer
        init: str = attrs.field(default="both", validator=one_of("pretrained", "random", "both"))
        seed: int = 0
        limit_train: int | None = 10000
        limit_test: int | None = 2000
        epochs: int = 100
        batch_size: int = 128
        blr: float = 0.1
        warmup_epochs: float = 10.0
        plot: str | None = None  # PNG path; default next to the JSON (SOURCE/eval/igpt_layers.png)

    def __init__(self, config: "LayerSweep.Config"):
        self.config = config

    def _sweep(self, model: IGPT, layers: list[int], train_ds: Any, test_ds: Any) -> dict[int, dict[str, float]]:
        c = self.config
        tr_f, tr_y = layer_features(model, train_ds, layers, c.batch_size)
        te_f, te_y = layer_features(model, test_ds, layers, c.batch_size)
        classes = int(max(tr_y.max(), te_y.max())) + 1
        out = {}
        for i, layer in enumerate(layers):
            probe = train_linear_probe(tr_f[i], tr_y, classes, epochs=c.epochs, batch_size=c.batch_size, blr=c.blr,
                                       warmup_epochs=min(c.warmup_epochs, c.epochs), seed=c.seed)
            with torch.no_grad():
                out[layer] = {"top1": topk_accuracy(probe(te_f[i]), te_y, (1,))["top1"],
                              "train_top1": topk_accuracy(probe(tr_f[i]), tr_y, (1,))["top1"]}
        return out

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        if len(sources) != 1:
            raise ConfigError(f"igpt_layers takes one run folder or checkpoint, got {len(sources)}: {sources}")
        t0 = time.perf_counter()
        src = sources[0]
        pretrained = load_source(src, init="pretrained", seed=c.seed)
        if not isinstance(pretrained, IGPT):
            raise ConfigError(f"{src} is a {type(pretrained).__name__}, not an iGPT model (model.name: igpt)")
        n_layer = pretrained.config.n_layer
        layers = list(range(n_layer + 1)) if c.layers is None else sorted(set(c.layers))
        bad = [x for x in layers if not 0 <= x <= n_layer]
        if bad:
            raise ConfigError(f"invalid value {bad} for 'layers': this model has layers 0..{n_layer}")
        train_ds, test_ds = eval_datasets(pretrained.recipe)
        train_sub, split = select_train(train_ds, None, 0, c.limit_train)
        test_sub = head_subset(test_ds, c.limit_test)
        record: dict[str, Any] = {"protocol": "igpt_layers", "source": str(src), "method": pretrained.recipe.method,
                                  "objective": pretrained.config.objective, "layers": layers, "seed": c.seed,
                                  "epochs": c.epochs, "blr": c.blr, **split, "num_test": len(test_sub)}
        curves: dict[str, dict[int, float]] = {}
        inits = ["pretrained", "random"] if c.init == "both" else [c.init]
        for init in inits:
            if init == "pretrained":
                model = pretrained
            else:
                model = load_source(src, init="random", seed=c.seed)
                model.palette.load_state_dict(pretrained.palette.state_dict())  # same tokens as the pretrained
            res = self._sweep(model, layers, train_sub, test_sub)
            best = max(res, key=lambda k: res[k]["top1"])
            record[init] = {"by_layer": {str(k): v for k, v in res.items()}, "best_layer": best,
                            "best_top1": res[best]["top1"]}
            curves[init] = {k: v["top1"] for k, v in res.items()}
        run = Path(src)
        folder = run / "eval" if (run / "checkpoints").is_dir() else Path("eval")
        plot = Path(c.plot) if c.plot else folder / "igpt_layers.png"
        record["plot"] = str(plot_layers(curves, plot, f"{pretrained.recipe.name}: linear probe by layer "
                                                       f"({split['num_train']} train / {len(test_sub)} test)"))
        record["seconds"] = round(time.perf_counter() - t0, 2)
        parts = [f"{k}: best layer {record[k]['best_layer']} top-1 {record[k]['best_top1']:.4f}" for k in inits]
        record["summary"] = "igpt_layers: " + "; ".join(parts) + f" (plot {record['plot']})"
        return record
