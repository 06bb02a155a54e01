"""The AttMask x contrastive hybrid, written as a recipe only, trains: every named term falls."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import mimkit
from mimkit.config import load_yaml

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "hybrid_attmask_contrastive.yaml"


def test_hybrid_recipe_trains_with_falling_terms(tmp_path: Path) -> None:
    pytest.importorskip("mimkit_attmask")
    pytest.importorskip("mimkit_contrastive")
    recipe = load_yaml(RECIPE)
    recipe["output_dir"] = str(tmp_path)
    recipe["data"]["limit"] = 1024
    # smaller than the example (CPU test budget); the wiring is the recipe's
    recipe["model"]["encoder"].update({"embed_dim": 96, "depth": 2, "num_heads": 3})
    recipe["model"]["decoder"].update({"embed_dim": 64, "depth": 1})
    recipe["model"]["losses"]["nce"]["predictor"]["out_dim"] = 96  # the key's width
    recipe["optim"]["warmup_epochs"] = 0.1
    recipe["train"].update({"batch_size": 32, "max_steps": 30, "log_every": 1, "progress": False,
                            "visualize": False, "ckpt_every": 1000})
    run = mimkit.train(recipe)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    for key in ("loss", "loss/rec", "loss/nce"):
        values = [r[key] for r in rows]
        assert all(v == v and abs(v) < float("inf") for v in values), key
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        assert last < first, f"{key} did not fall: {first:.4f} -> {last:.4f}"
