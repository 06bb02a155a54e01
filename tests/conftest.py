"""Shared fixtures: tiny recipes that train in seconds on 2 CPU cores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIM = [sys.executable, "-m", "mimkit.cli"]


def tiny_recipe(out: Path, name: str = "tiny", **train) -> dict:
    """A 2-block MAE on 256 Fashion-MNIST images (needs the mae plugin)."""
    return {
        "method": "mae_tiny_fashion_mnist",
        "name": name,
        "output_dir": str(out),
        "data": {"limit": 256},
        "eval_data": {"limit": 8},
        "model": {
            "encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
            "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        },
        "optim": {"warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 32, "log_every": 2, "ckpt_every": 100, "visualize": False,
                  "progress": False} | train,
    }


@pytest.fixture
def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env
