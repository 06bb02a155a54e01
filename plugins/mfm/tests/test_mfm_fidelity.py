"""MFM as Jiahao000/MFM: BEiT initialization (truncated at +-0.02, fix_init_weight), tokens not
decayed, warm-up/min lr scaled by batch/512, and timm's cosine with the warm-up inside."""
from __future__ import annotations

import math

import pytest
import torch

import mimkit
from mimkit.config import resolve
from mimkit.schedules import lr_at


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mimkit.build({"method": "mfm_tiny_fashion_mnist", "model": {"encoder": {"embed_dim": 192, "depth": 4}}})


def test_beit_initialization(model) -> None:
    vit = model.encoder.vit
    qkv = vit.blocks[0].attn.qkv.weight
    assert float(qkv.abs().max()) <= 0.02 + 1e-7  # cut at +-std
    # std of N(0, .02) truncated at +-1 sigma: 0.02 * sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) = 0.02 * 0.5379
    assert float(qkv.std()) == pytest.approx(0.02 * 0.5379, rel=0.03)
    assert float(vit.patch_embed.proj.weight.abs().max()) <= 0.02 + 1e-7
    assert float(vit.pos_embed.abs().max()) <= 0.02 + 1e-7 and float(vit.pos_embed.std()) > 0.008
    assert float(vit.cls_token.abs().max()) <= 0.02 + 1e-7
    for layer_id, blk in enumerate(vit.blocks, start=1):  # fix_init_weight: / sqrt(2 * layer_id)
        for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
            assert float(w.abs().max()) <= 0.02 / math.sqrt(2 * layer_id) + 1e-7
            assert float(w.std()) == pytest.approx(0.02 * 0.5379 / math.sqrt(2 * layer_id), rel=0.06)
    assert torch.equal(blk.attn.qkv.bias, torch.zeros_like(blk.attn.qkv.bias))
    assert torch.equal(vit.norm.weight, torch.ones_like(vit.norm.weight))


def test_tokens_not_decayed_and_lrs_scaled_by_batch_over_512() -> None:
    from mimkit.optim import param_groups

    r = resolve({"method": "mfm_vit_base_patch16"})
    o = r.optim
    assert o.decay_tokens is False
    eff = r.train.batch_size * r.train.grad_accum  # 128 x 8 = 1024
    # the official per-512 values, scaled with the batch like the lr (main_mfm.py)
    assert o.warmup_start_lr == 2.5e-7 and o.min_lr == 2.5e-6 and o.scale_min_lr is True and o.ref_batch == 512
    peak = o.base_lr * eff / 512
    assert lr_at(0, peak, o, 20, 300) == pytest.approx(2.5e-7 * eff / 512)
    assert lr_at(300, peak, o, 20, 300) == pytest.approx(2.5e-6 * eff / 512)
    m = mimkit.build({"method": "mfm_tiny_fashion_mnist", "model": {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3}}})
    groups = param_groups(m, 0.05, decay_tokens=False)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(m.encoder.vit.pos_embed) in no_decay and id(m.encoder.vit.cls_token) in no_decay


def test_presets_use_timm_cosine_with_the_warmup_inside() -> None:
    """Every MFM preset runs the core's ``timm_cosine`` schedule: the numbers of timm's
    CosineLRScheduler as MFM's lr_scheduler.py builds it (warmup_prefix=False)."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    for name in ("mfm_vit_base_patch16", "mfm_resnet50", "mfm_tiny_fashion_mnist"):
        assert resolve({"method": name}).optim.schedule == "timm_cosine", name
    o = resolve({"method": "mfm_vit_base_patch16"}).optim
    peak, s = o.base_lr * 1024 / 512, 1024 / 512  # main_mfm.py: lr, warmup lr and min lr x batch / 512
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    total, warm = 200, 20
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=o.min_lr * s, warmup_lr_init=o.warmup_start_lr * s,
                              warmup_t=warm, cycle_limit=1, t_in_epochs=False)  # as MFM's lr_scheduler.py
    for step in [0, 1, 10, 19, 20, 21, 100, 150, 199, 200, 230]:
        sched.step_update(step)
        ref = opt.param_groups[0]["lr"]
        assert lr_at(step, peak, o, warm, total) == pytest.approx(ref, rel=1e-9), step
    # not the same as a cosine started after the warm-up (the core's default schedule)
    assert lr_at(20, peak, o, warm, total) < peak * 0.99
