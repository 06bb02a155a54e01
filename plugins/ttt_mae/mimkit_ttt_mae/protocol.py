"""``mim eval ttt_mae RUN``: a head on the frozen MAE encoder, then TTT-MAE on corrupted test sets."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Subset

from mimkit.plugin_api import MimkitError, eval_datasets, load_source, one_of

from mimkit_corruptions import FAMILIES, parse_corruptions, parse_severities, sweep, test_spec

from .adapt import adapt_batched, adapt_loop, auto_chunk, mask_noise
from .heads import build_head, encoder_tokens, train_head


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    return batch["image"], torch.as_tensor(batch["label"])


def eval_dir(source: str) -> Path:
    p = Path(source)
    return p / "eval" if (p / "checkpoints").is_dir() else Path("eval")


def plot_steps(curves: dict[str, list[float]], path: Path, title: str) -> Path:
    """Accuracy against the number of TTT steps, one line per corruption family (the paper's curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, acc in curves.items():
        ax.plot(range(len(acc)), acc, marker="o" if len(acc) < 25 else None, ms=3, label=name)
    ax.set_xlabel("TTT steps per image")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class TTTMAEProtocol:
    """TTT-MAE on an MAE run: train a main-task head on the frozen encoder (ViT probing or the
    linear BN head), then per test image reset and take `steps` MAE-loss SGD steps on the encoder
    (decoder frozen) over a batch of masked copies; accuracy per step index, per corruption."""

    @attrs.define(kw_only=True)
    class Config:
        head: str = attrs.field(default="vit", validator=one_of("vit", "linear"))
        head_dim: int = 128  # the ViT head's width (official: 768 for ViT-L/H, 512 for ViT-S)
        head_depth: int = 2  # official: 12 (8 for ViT-S)
        head_heads: int = 4
        head_train: int | None = 10000  # training images for the head
        head_epochs: int = 10  # official: 20
        head_batch: int = 128
        head_blr: float | None = None  # default: 1e-3 (ViT head, AdamW, as main_prob) / 0.1 (linear, SGD)
        head_wd: float | None = None  # default: 0.2 (ViT head) / 0.0 (linear)
        steps: int = 20  # steps_per_example
        copies: int = 128  # masked copies of the test image per step (the official batch)
        lr: float = 5e-3  # blr 1e-2 * 128 / 256
        momentum: float = 0.9
        mask_ratio: float = 0.75
        # many test images at once (same predictions as the per-image loop). Off by default: on a CPU
        # at >= 32 copies the loop is as fast (benchmarks/ttt_mae_batched.py); batched pays with few
        # copies, small encoders, or on a GPU
        batched: bool = False
        impl: str = attrs.field(default="auto", validator=one_of("auto", "stacked", "vmap"))  # batched implementation
        chunk: int | None = None  # test images adapted together when batched; None: auto_chunk(copies)
        corruptions: Any = "all"
        severity: Any = 5
        limit: int | None = 20  # first N test images per corruption/severity
        clean: bool = False
        report_steps: list[int] = attrs.field(factory=lambda: [0, 1, 5, 10, 20])
        seed: int = 0

    def __init__(self, config: "TTTMAEProtocol.Config"):
        self.config = config
        self.corruptions = parse_corruptions(config.corruptions)
        self.severities = parse_severities(config.severity)

    def head_for(self, model: torch.nn.Module, source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Train (or reuse, from RUN/eval/) the main-task head on the frozen encoder."""
        c = self.config
        blr = c.head_blr if c.head_blr is not None else (1e-3 if c.head == "vit" else 0.1)
        wd = c.head_wd if c.head_wd is not None else (0.2 if c.head == "vit" else 0.0)
        spec = {"head": c.head, "dim": c.head_dim, "depth": c.head_depth, "heads": c.head_heads, "train": c.head_train,
                "epochs": c.head_epochs, "batch": c.head_batch, "blr": blr, "wd": wd, "seed": c.seed}
        train_ds, test_ds = eval_datasets(model.recipe)
        classes = len(getattr(train_ds, "classes", None) or range(10))
        torch.manual_seed(c.seed)
        head = build_head(c.head, model.encoder, classes, c.head_dim, c.head_depth, c.head_heads)
        folder = eval_dir(source)
        key = "_".join(f"{k}{v}" for k, v in spec.items())
        path = folder / f"ttt_mae_head_{abs(hash(key)) % 10**8}.pt"
        meta = folder / (path.stem + ".json")
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("spec") == spec:
            head.load_state_dict(torch.load(path, weights_only=True))
            return head.eval(), json.loads(meta.read_text())
        n = len(train_ds) if c.head_train is None else min(c.head_train, len(train_ds))
        x, y = _stack(Subset(train_ds, range(n)))
        tokens = encoder_tokens(model.encoder, x)
        info = train_head(head, tokens, y, epochs=c.head_epochs, batch_size=c.head_batch, blr=blr, weight_decay=wd,
                          warmup_epochs=min(1.0, c.head_epochs / 10), seed=c.seed)
        xt, yt = _stack(Subset(test_ds, range(min(2000, len(test_ds)))))
        with torch.no_grad():
            info["clean_test_top1_2000"] = float((head(encoder_tokens(model.encoder, xt)).argmax(1) == yt).float().mean())
        info["spec"] = spec
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(head.state_dict(), path)
        meta.write_text(json.dumps(info, indent=1))
        return head.eval(), info

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        source = sources[0]
        model = load_source(source)
        for name in ("encoder", "decoder", "target"):
            if getattr(model, name, None) is None:
                raise MimkitError(f"{source}: TTT-MAE needs an MAE run (encoder + decoder + pixel target); "
                                  f"this {type(model).__name__} has no {name}")
        head, head_info = self.head_for(model, source)
        for p in head.parameters():
            p.requires_grad_(False)
        spec = test_spec(model.recipe)
        num_tokens = model.encoder.num_patches
        counter = {"images": 0, "adapt_s": 0.0}

        def evaluate(ds) -> dict[str, float]:
            x, y = _stack(ds)
            idx = ds.indices if isinstance(ds, Subset) else range(len(ds))
            noise = mask_noise(idx, c.steps, c.copies, num_tokens, c.seed)
            t = time.perf_counter()
            if c.batched:
                logits = adapt_batched(model, head, x, noise, lr=c.lr, momentum=c.momentum, mask_ratio=c.mask_ratio,
                                       chunk=c.chunk or auto_chunk(c.copies, x.device), impl=c.impl)
            else:
                logits = adapt_loop(model, head, x, noise, lr=c.lr, momentum=c.momentum, mask_ratio=c.mask_ratio)
            counter["adapt_s"] += time.perf_counter() - t
            counter["images"] += len(x)
            acc = (logits.argmax(-1) == y[:, None]).float().mean(0)  # (steps + 1,)
            return {f"step{s}": float(acc[s]) for s in range(len(acc))}

        result = sweep(evaluate, spec, self.corruptions, self.severities, c.limit, c.seed, clean=c.clean)
        steps = [s for s in c.report_steps if s <= c.steps]
        curves = {f: [result["per_family"][f][f"step{s}"] for s in range(c.steps + 1)] for f in result["per_family"]}
        curves["mean"] = [result["mean"][f"step{s}"] for s in range(c.steps + 1)]
        folder = eval_dir(source)
        sev = "-".join(map(str, self.severities))
        png = plot_steps(curves, folder / f"ttt_mae_{c.head}_s{sev}.png",
                         f"TTT-MAE ({c.head} head), severity {sev}, {c.limit} images/set, {c.copies} copies")
        lines = [f"{'family':10s} " + " ".join(f"{'step' + str(s):>7s}" for s in steps)]
        for f, curve in curves.items():
            lines.append(f"{f:10s} " + " ".join(f"{curve[s]:7.3f}" for s in steps))
        text = "\n".join(lines)
        record = {"protocol": "ttt_mae", "source": str(source), "config": attrs.asdict(self.config),
                  "head_info": head_info, "corruptions": self.corruptions, "severities": self.severities,
                  **result, "curves": curves, "plot": str(png),
                  "images_per_s": counter["images"] / max(1e-9, counter["adapt_s"]),
                  "seconds": round(time.perf_counter() - t0, 1), "text": text}
        record["summary"] = (f"ttt_mae ({c.head} head): mean accuracy at steps {steps}: "
                             + ", ".join(f"{curves['mean'][s]:.3f}" for s in steps) + f"\n{text}\n(plot: {png})")
        return record


__all__ = ["TTTMAEProtocol", "FAMILIES"]
