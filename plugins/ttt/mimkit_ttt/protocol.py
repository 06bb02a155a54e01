"""``mim eval ttt RUN``: joint training vs test-time training on the corrupted test sets."""
from __future__ import annotations

import time
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from mimkit.plugin_api import ConfigError, MimkitError, load_source, one_of

from mimkit_corruptions import format_table, parse_corruptions, parse_severities, sweep, test_spec

from .adapt import SETTINGS, AdaptConfig, run_stream
from .model import TTT


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    return batch["image"], torch.as_tensor(batch["label"])


class TTTProtocol:
    """Test-time training of a `ttt` run: per corruption and severity, the accuracy of the jointly
    trained network (no adaptation) and after TTT (standard: reset per image; online: no reset)."""

    @attrs.define(kw_only=True)
    class Config:
        mode: str = attrs.field(default="standard", validator=one_of("standard", "online", "both"))
        setting: str = attrs.field(default="slow", validator=one_of(*SETTINGS))  # niter / lr of script_test_c10.py
        niter: int | None = None  # overrides the setting's
        lr: float | None = None  # overrides the setting's
        batch_size: int = 32
        fix_ssh: bool = False
        fix_bn: bool = False
        threshold: float = 1.0
        corruptions: Any = "all"
        severity: Any = 5
        limit: int | None = 100  # the first N test images (each is adapted on: slow on a CPU)
        clean: bool = True
        seed: int = 0

    def __init__(self, config: "TTTProtocol.Config"):
        self.config = config
        self.corruptions = parse_corruptions(config.corruptions)
        self.severities = parse_severities(config.severity)

    def adapt_config(self, mode: str, fill: float) -> AdaptConfig:
        c = self.config
        niter, lr = SETTINGS[c.setting]
        if mode == "online":
            niter = 1  # online TTT: one step per image, no reset
        return AdaptConfig(mode=mode, niter=c.niter or niter, lr=c.lr or lr, batch_size=c.batch_size,
                           fix_ssh=c.fix_ssh, fix_bn=c.fix_bn, threshold=c.threshold, fill=fill)

    def __call__(self, sources: list[str]) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        model = load_source(sources[0])
        if not isinstance(model, TTT):
            raise MimkitError(f"{sources[0]}: a `ttt` run is needed, this one holds a {type(model).__name__}")
        spec = test_spec(model.recipe)
        mean, std = 0.0, 1.0
        modes = ["standard", "online"] if c.mode == "both" else [c.mode]
        if c.limit is not None and c.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {c.limit}")

        def evaluate(ds) -> dict[str, float]:
            nonlocal mean, std
            base = getattr(ds, "dataset", ds)
            mean, std = float(getattr(base, "mean", (0.0,))[0]), float(getattr(base, "std", (1.0,))[0])
            x, y = _stack(ds)
            with torch.no_grad():
                model.eval()
                joint = float((model.classify(x).argmax(1) == y).float().mean())
            out = {"joint": joint}
            for mode in modes:
                preds, _ = run_stream(model, x, self.adapt_config(mode, (0.0 - mean) / std), seed=c.seed)
                out[f"ttt_{mode}"] = float((preds == y).float().mean())
            return out

        result = sweep(evaluate, spec, self.corruptions, self.severities, c.limit, c.seed, clean=c.clean)
        record: dict[str, Any] = {
            "protocol": "ttt", "source": str(sources[0]), "modes": modes, "corruptions": self.corruptions,
            "severities": self.severities, "limit": c.limit,
            "adapt": {m: attrs.asdict(self.adapt_config(m, 0.0)) for m in modes}, **result,
            "seconds": round(time.perf_counter() - t0, 1)}
        keys = ["joint"] + [f"ttt_{m}" for m in modes]
        record["text"] = "\n\n".join(f"[{k}]\n" + format_table(result, k) for k in keys)
        record["summary"] = "ttt: mean corruption accuracy " + ", ".join(
            f"{k} {result['mean'][k]:.4f}" for k in keys) + f" ({c.limit} images per set)\n" + record["text"]
        return record
