"""BootMAE: the losses against the official formulas, the mask, the EMA and ramp schedules,
and the tiny preset training."""

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.plugin_api import Context
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit_bootmae import block_center_weights, feature_ramp

TINY = "bootmae_tiny_fashion_mnist"


def _model(**model):
    torch.manual_seed(0)
    return mimkit.build({"method": TINY, "model": model})


def test_block_center_weights_match_a_direct_count():
    g = torch.Generator().manual_seed(0)
    hidden = torch.rand(3, 36, generator=g) < 0.6
    w = block_center_weights(hidden, (6, 6))
    m = hidden.float().reshape(3, 6, 6)
    for b in range(3):
        for i in range(6):
            for j in range(6):
                nb = sum(float(m[b, a, c]) for a in range(i - 1, i + 2) for c in range(j - 1, j + 2)
                         if 0 <= a < 6 and 0 <= c < 6)
                want = float(m[b, i, j]) * (1 + nb / 9)  # zero padding counted: divisor 9
                assert w[b, i * 6 + j].item() == pytest.approx(want, abs=1e-6)
    full = torch.ones(1, 36, dtype=torch.bool)
    assert block_center_weights(full, (6, 6)).reshape(6, 6)[2, 2].item() == pytest.approx(2.0)  # a block's centre: 2x


def test_pixel_and_feature_losses_equal_the_official_formulas():
    model = _model().train()
    x = torch.randn(2, 1, 32, 32)
    noise = torch.stack([model.masker.sample_noise(torch.Generator().manual_seed(i)) for i in range(2)])
    out = model({"image": x}, Context(), noise=noise)
    hidden = out.mask.hidden
    assert hidden.sum(1).tolist() == [48, 48]
    # pixels, as run_pretraining.py: per patch and channel, biased var, eps 1e-5, in image space
    p, win = 4, 8
    patch = x.reshape(2, 1, win, p, win, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, p, p)
    mean = patch.mean(dim=[2, 3], keepdim=True)
    std = torch.sqrt(patch.var(dim=[2, 3], keepdim=True, unbiased=False) + 1e-5)
    im_mean = mean.repeat(1, 1, p, p).reshape(2, win, win, 1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(2, 1, 32, 32)
    im_std = std.repeat(1, 1, p, p).reshape(2, win, win, 1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(2, 1, 32, 32)
    im_norm = (x - im_mean) / im_std
    pred_img = out.pred.reshape(2, win, win, p, p, 1).permute(0, 5, 1, 3, 2, 4).reshape(2, 1, 32, 32)
    loss_mask = hidden.float().reshape(2, 1, win, win)
    weight = loss_mask * F.avg_pool2d(loss_mask, 3, 1, 1) + loss_mask
    up = lambda t: F.interpolate(t, (32, 32), mode="nearest")
    rloss = torch.mean(up(weight) * (pred_img - im_norm) ** 2) / torch.mean(up(loss_mask))
    assert out.losses["pix"].item() == pytest.approx(rloss.item(), rel=1e-5)
    # features: the EMA model's last block on the full image, no final norm (get_feature)
    vit = model.teacher.encoder.vit
    t = torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(x)], 1) + vit.pos_embed
    for blk in vit.blocks:
        t = blk(t)
    feat_gt = t[:, 1:]
    assert torch.allclose(out.extra["feat_target"], feat_gt, atol=1e-5)
    ln = lambda z: F.layer_norm(z, z.shape[-1:], eps=1e-6)
    perc = weight.reshape(2, 64, 1)
    ploss = torch.mean(perc * (ln(feat_gt) - ln(out.extra["feat_pred"])) ** 2) / torch.mean(up(loss_mask))
    assert out.losses["feat"].item() == pytest.approx(ploss.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((out.losses["pix"] + out.extra["feature_weight"] * out.losses["feat"]).item())


def test_feature_weight_ramps_linearly_over_the_first_quarter():
    epochs, fw = 800, 1.0
    for e in (0, 1, 99, 150, 199, 200, 500, 799):  # official: min(fw * (1 + e) / epochs * 4, fw)
        assert feature_ramp(e, epochs, 0.25) == pytest.approx(min(fw * (1 + e) / epochs * 4, fw))
    model = _model(ramp_every="step")
    model.set_schedule(400, 100)
    assert [model.feature_weight_at(s, 0) for s in (0, 49, 99, 100, 300)] == pytest.approx([0.01, 0.5, 1, 1, 1])
    model = _model(ramp_every="epoch")
    model.set_schedule(800 * 10, 10)
    assert model.feature_weight_at(0, 99) == pytest.approx(0.5)


def _official_ema(epoch, dynamic=True, start=0.999):  # utils.adjust_ema_momentum
    if epoch < 100:
        return start + epoch / 100 * (0.9999 - start)
    return 0.9999 + min(300, epoch - 100) / 300 * (0.99999 - 0.9999) if dynamic else 0.9999


def test_ema_schedule_per_step_follows_the_official_formula_and_updates_the_whole_model():
    with torch.device("meta"):
        model = mimkit.build({"method": "bootmae_vit_base_patch16"})
    teacher = model.teacher
    assert teacher.paths == ["encoder", "pixel_decoder", "feature_decoder"] and teacher.config.every == "step"
    teacher.set_schedule(800 * 50, 50)
    for e in (0, 1, 37, 100, 250, 400, 799):
        assert teacher.momentum_at(e * 50) == pytest.approx(_official_ema(e), abs=1e-12)
    # one optimizer step: every copied part moves to m * teacher + (1 - m) * student
    model = _model()
    model.set_schedule(1000, 100)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.on_step_end(51)  # the update after step 51 uses m(50): epoch 0.5 -> 0.995 in the tiny preset
    m = model.teacher.momentum_at(50)
    assert m == pytest.approx(0.995)
    for path in ("pixel_decoder", "encoder"):
        name, s = next((n, p) for n, p in model.get_submodule(path).named_parameters() if p.requires_grad)
        key = f"copies.{path}.{name}"
        assert torch.allclose(model.teacher.state_dict()[key], m * before[key] + (1 - m) * s, atol=1e-6)


def test_bootmae_block_masker_hides_exact_counts_in_blocks():
    with torch.device("meta"):
        base = mimkit.build({"method": "bootmae_vit_base_patch16"})
    assert (base.masker.num, base.masker.block_num, base.masker.min_num_patches, base.masker.max_num_patches) == (147, 120, 16, 60)
    model = _model()
    masker = model.masker
    assert (masker.num, masker.block_num) == (48, 39)
    masks = torch.stack([masker.sample_noise(torch.Generator().manual_seed(i)) for i in range(50)])
    assert masks.sum(1).eq(48).all()
    # blocks, not scattered patches: hidden patches have more hidden 4-neighbours than under
    # random masking with the same count
    def hidden_neighbours(m):
        grid = m.float().reshape(-1, 8, 8)
        nbrs = (F.pad(grid, (0, 0, 1, 0))[:, :-1] + F.pad(grid, (0, 0, 0, 1))[:, 1:]
                + F.pad(grid, (1, 0))[..., :-1] + F.pad(grid, (0, 1))[..., 1:])
        return float((nbrs * grid).sum() / (grid.sum() * 4))

    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(64, generator=g) < 48 for _ in range(50)])
    assert hidden_neighbours(masks) > hidden_neighbours(rand) + 0.03, (hidden_neighbours(masks), hidden_neighbours(rand))


def test_target_aware_decoder_contract():
    check_component(TINY, "model.pixel_decoder")


def test_tiny_preset_trains_and_every_term_falls(tmp_path):
    small = {"model": {"encoder": {"depth": 2}, "pixel_decoder": {"depth": 1}, "feature_decoder": {"depth": 1}}}
    over = tiny_overrides(TINY, limit=96, batch_size=16) | small
    check_preset_trains(TINY, tmp_path, over, steps=6, check_resume=False, expect_fall=["loss", "loss/pix", "loss/feat"])
