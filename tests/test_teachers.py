"""EMA and frozen teachers: arithmetic, schedules, outputs used in the same step, checkpoints."""
import math

import pytest
import torch

import mimkit
from mimkit.components.teachers import cls_attention

pytest.importorskip("mimkit_mae")

TINY = {"method": "mae_tiny_fashion_mnist",
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def with_teacher(**teacher):
    return TINY | {"model": TINY["model"] | {"teacher": {"name": "ema", **teacher}}}


def test_ema_update_matches_direct_computation():
    model = mimkit.build(with_teacher(schedule="constant", momentum=0.9))
    before = {k: v.clone() for k, v in model.teacher.encoder.state_dict().items()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    model.on_step_end(1)
    student = model.encoder.state_dict()
    for k, t in model.teacher.encoder.state_dict().items():
        assert torch.allclose(t, 0.9 * before[k] + 0.1 * student[k], atol=1e-6), k
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_momentum_schedules():
    t = mimkit.build(with_teacher(momentum=0.996, momentum_end=1.0, schedule="cosine")).teacher
    t.set_schedule(total_steps=100, steps_per_epoch=10)
    for k in (0, 25, 50, 100):
        expect = 1.0 - (1.0 - 0.996) * (math.cos(math.pi * k / 100) + 1) / 2
        assert t.momentum_at(k) == pytest.approx(expect)
    pw = mimkit.build(with_teacher(schedule="piecewise", points=[[0, 0.999], [100, 0.9999], [400, 0.99999]])).teacher
    pw.set_schedule(total_steps=8000, steps_per_epoch=10)
    assert pw.momentum_at(0) == pytest.approx(0.999)
    assert pw.momentum_at(500) == pytest.approx(0.999 + (0.9999 - 0.999) * 0.5)  # epoch 50
    assert pw.momentum_at(2500) == pytest.approx(0.9999 + (0.99999 - 0.9999) * 0.5)  # epoch 250
    ep = mimkit.build(with_teacher(momentum=0.96, momentum_end=0.99, every="epoch")).teacher
    ep.set_schedule(total_steps=100, steps_per_epoch=10)  # 10 epochs
    assert ep.momentum_at(5) == pytest.approx(0.99 - 0.03 * (math.cos(math.pi / 2) + 1) / 2)
    with pytest.raises(mimkit.ConfigError, match="model.teacher.schedule"):
        mimkit.build(with_teacher(schedule="linear"))


def test_teacher_outputs_reach_the_step_and_attention_is_exact():
    model = mimkit.build(with_teacher()).eval()
    x = torch.randn(2, 1, 32, 32)
    out = model({"image": x}, noise=torch.rand(2, 64))
    attn = out.extra["teacher_cls_attn"]
    assert attn.shape == (2, 64) and torch.all(attn > 0)
    # direct computation of the last block's [CLS] attention, averaged over heads
    enc = model.teacher.encoder
    tokens = enc.embed(x, None)
    tokens = enc.vit.blocks[0](tokens)
    blk = enc.vit.blocks[1]
    h = blk.norm1(tokens)
    qkv = blk.attn.qkv(h).reshape(2, 65, 3, 2, 32).permute(2, 0, 3, 1, 4)
    a = (qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(32)).softmax(-1)
    assert torch.allclose(attn, a[:, :, 0, 1:].mean(1), atol=1e-6)
    assert torch.allclose(attn, cls_attention(blk, tokens))
    assert torch.allclose(out.extra["teacher_latent"], enc.forward_features(x), atol=1e-5)


def test_ema_state_is_saved_and_restored(tmp_path):
    from conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, "ema", epochs=1) | {"model": tiny_recipe(tmp_path)["model"] | {"teacher": {"name": "ema", "momentum": 0.9, "schedule": "constant"}}}
    run = mimkit.train(recipe)
    model = mimkit.load(run)
    assert not torch.equal(model.teacher.encoder.vit.blocks[0].attn.qkv.weight, model.encoder.vit.blocks[0].attn.qkv.weight)
    frozen = mimkit.build(TINY | {"model": TINY["model"] | {"teacher": {"name": "frozen", "path": str(run)}}})
    assert torch.equal(frozen.teacher.encoder.vit.blocks[0].attn.qkv.weight, model.encoder.vit.blocks[0].attn.qkv.weight)
