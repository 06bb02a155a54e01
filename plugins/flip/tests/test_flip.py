"""FLIP: the CLIP loss against a hand computation, the logit-scale clip, image pooling and
masking, unmasked tuning, two processes = one process on the same global batch, the tiny preset,
and the zero-shot protocol on a trained run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mimkit
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit.types import Context
from mimkit_flip import clip_loss

TINY_MODEL = {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
              "text": {"width": 32, "depth": 1, "num_heads": 2}, "embed_dim": 16}


def tiny_flip(**model):
    torch.manual_seed(0)
    return mimkit.build({"method": "flip_tiny_fashion_mnist", "model": {**TINY_MODEL, **model}})


def test_clip_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    zi = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    zt = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    s = 1 / 0.07
    sim = [[s * sum(zi[i, c].item() * zt[j, c].item() for c in range(3)) for j in range(4)] for i in range(4)]
    i2t = [-(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(4)))) for i in range(4)]
    t2i = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(4)))) for j in range(4)]
    want = (sum(i2t) / 4 + sum(t2i) / 4) / 2
    assert clip_loss(zi, zt, s).item() == pytest.approx(want, rel=1e-5)
    assert clip_loss(zi, zi, 100.0).item() < 0.01  # aligned pairs, sharp scale: near zero


def test_logit_scale_starts_at_1_over_007_and_is_clipped_at_100():
    m = tiny_flip()
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    s = m.scale()
    assert s.item() == pytest.approx(100.0, rel=1e-6)
    s.backward()
    assert m.logit_scale.grad.item() == 0.0  # clipped: no gradient pushes it further
    with torch.no_grad():
        m.logit_scale.fill_(-1.0)
    assert m.scale().item() == pytest.approx(1.0)  # clipped below at log-scale 0


def test_step_removes_half_the_patches_pools_all_tokens_and_tunes_unmasked_at_the_end():
    m = tiny_flip().train()
    x = torch.randn(6, 1, 32, 32)
    texts = ["a photo of a bag."] * 3 + ["a photo of a coat."] * 3
    noise = torch.rand(6, 64, generator=torch.Generator().manual_seed(1))
    out = m({"image": x, "text": texts}, Context(step=0), noise=noise)
    assert out.latent.shape == (6, 1 + 32, 32)  # [CLS] + 32 of 64 patches reach the encoder
    z = m.img_proj(out.latent.mean(1))  # FLIP: mean of ALL output tokens, [CLS] included
    assert torch.allclose(out.extra["z_img"], z / (z.norm(dim=-1, keepdim=True) + 1e-8), atol=1e-6)
    want = clip_loss(out.extra["z_img"], m.encode_text(texts), m.scale())
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    m.set_schedule(total_steps=100, steps_per_epoch=10)  # the preset tunes the last 10% unmasked
    assert m(({"image": x, "text": texts}), Context(step=89), noise=noise).latent.shape[1] == 33
    assert m(({"image": x, "text": texts}), Context(step=90), noise=noise).latent.shape[1] == 65
    full = m.encode_image(x)  # evaluation: every patch
    assert full.shape == (6, 16) and torch.allclose(full.norm(dim=-1), torch.ones(6), atol=1e-5)


def _recipe(tmp_path: Path, name: str, batch: int) -> dict:
    return {"method": "flip_tiny_fashion_mnist", "name": name, "output_dir": str(tmp_path),
            "data": {"limit": 64}, "eval_data": {"limit": 8}, "model": TINY_MODEL,
            "optim": {"warmup_epochs": 0.5},
            "train": {"epochs": 1, "batch_size": batch, "log_every": 1, "ckpt_every": 100, "visualize": False,
                      "progress": False}}


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(sorted((run / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))


def test_two_processes_give_the_single_process_loss_and_weights(tmp_path):
    one = mimkit.train(_recipe(tmp_path, "one", 32))
    f = tmp_path / "two.yaml"
    f.write_text(yaml.safe_dump(_recipe(tmp_path, "two", 16)))  # 2 x 16 = the same global batch of 32
    script = Path(sys.executable).parent / "accelerate"
    launch = [str(script), "launch"] if script.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    out = subprocess.run([*launch, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mimkit.cli", "train", str(f)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                                           "OMP_NUM_THREADS": "1"})  # 2 ranks, 1 core each
    assert out.returncode == 0, out.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    l1 = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 2 and l1 == pytest.approx(l2, rel=1e-5)  # gathered: the global-batch loss
    w1, w2 = _weights(one), _weights(two)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5  # and the global-batch gradient


def test_tiny_preset_trains_and_zero_shot_runs_from_the_cli(tmp_path):
    over = tiny_overrides("flip_tiny_fashion_mnist", limit=64) | {"model": TINY_MODEL}
    run = check_preset_trains("flip_tiny_fashion_mnist", tmp_path, over, steps=4, expect_fall=False)
    out = subprocess.run([sys.executable, "-m", "mimkit.cli", "eval", "zeroshot", str(run), "--limit", "40",
                          "--templates", "['a photo of a {}.', 'itap of a {}.']"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((run / "eval" / "zeroshot.json").read_text())
    assert rec["num_test"] == 40 and rec["num_classes"] == 10 and rec["chance"] == 0.1
    assert 0.0 <= rec["top1"] <= rec["top5"] <= 1.0 and len(rec["templates"]) == 2
    assert "zeroshot" in out.stdout and "top-1" in out.stdout
