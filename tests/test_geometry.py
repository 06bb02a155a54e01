"""Patchify, sin-cos tables, gathers and per-patch normalization against direct computation."""
import math

import pytest
import torch

from mimkit.geometry import (gather_tokens, normalize_patches, patch_stats, patchify, restore_tokens,
                             sincos_1d, sincos_2d, sincos_3d, unpatchify)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_2d_round_trip_and_layout(channels):
    x = torch.randn(2, channels, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 16 * channels)
    # token 1 is row 0, column 1; values ordered (i, j, c) with c fastest (official 'nchpwq->nhwpqc')
    ref = x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[0, 1], ref)
    assert torch.equal(unpatchify(p, 4, (2, 3), channels), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_3d_round_trip_and_layout(channels):
    x = torch.randn(2, channels, 4, 8, 8)
    p = patchify(x, (2, 4, 4))
    assert p.shape == (2, 2 * 2 * 2, 2 * 16 * channels)
    # token (t=1, h=0, w=1) = index 1*4 + 0*2 + 1 = 5, flattened (pt, ph, pw, c)
    ref = x[1, :, 2:4, 0:4, 4:8].permute(1, 2, 3, 0).reshape(-1)
    assert torch.equal(p[1, 5], ref)
    assert torch.equal(unpatchify(p, (2, 4, 4), (2, 2, 2), channels), x)


def test_sincos_against_formula():
    dim, gh, gw = 8, 3, 4
    table = sincos_2d(dim, gh, gw, cls_token=True)
    assert table.shape == (1 + gh * gw, dim)
    assert torch.all(table[0] == 0)
    half, quarter = dim // 2, dim // 4
    for r in range(gh):
        for c in range(gw):
            row = table[1 + r * gw + c]
            for k in range(quarter):
                w = 1.0 / 10000 ** (k / quarter)
                # first half: column (the official meshgrid(w, h) order), second half: row
                assert row[k].item() == pytest.approx(math.sin(c * w), abs=1e-6)
                assert row[quarter + k].item() == pytest.approx(math.cos(c * w), abs=1e-6)
                assert row[half + k].item() == pytest.approx(math.sin(r * w), abs=1e-6)
                assert row[half + quarter + k].item() == pytest.approx(math.cos(r * w), abs=1e-6)
    t3 = sincos_3d(12, 2, 2, 2)
    assert t3.shape == (8, 12)
    assert torch.allclose(t3[:, :4], sincos_1d(4, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])))


def test_gather_and_restore_invert_a_shuffle():
    x = torch.randn(3, 10, 5)
    ids_shuffle = torch.stack([torch.randperm(10) for _ in range(3)])
    ids_restore = torch.argsort(ids_shuffle, 1)
    kept = gather_tokens(x, ids_shuffle[:, :4])
    assert torch.equal(kept[1, 2], x[1, ids_shuffle[1, 2]])
    token = torch.full((1, 1, 5), 7.0)
    full = restore_tokens(kept, token, ids_restore)
    for b in range(3):
        for i in range(10):
            expect = x[b, i] if i in ids_shuffle[b, :4] else token[0, 0]
            assert torch.equal(full[b, i], expect)


def test_norm_pix_variants_against_direct_computation():
    torch.manual_seed(0)
    p = torch.randn(2, 5, 4 * 3) * 3 + 1  # 4 pixels x 3 channels, channel fastest
    mae = normalize_patches(p)  # all values, unbiased var, eps inside the sqrt
    m, v = p.mean(-1, keepdim=True), p.var(-1, keepdim=True, unbiased=True)
    assert torch.allclose(mae, (p - m) / torch.sqrt(v + 1e-6), atol=1e-6)
    video = normalize_patches(p, channels=3, per_channel=True, unbiased=True, eps=1e-6, eps_inside_sqrt=False)
    boot = normalize_patches(p, channels=3, per_channel=True, unbiased=False, eps=1e-5, eps_inside_sqrt=True)
    for c in range(3):
        vals = p[..., c::3]  # channel c of every pixel
        mc = vals.mean(-1, keepdim=True)
        assert torch.allclose(video[..., c::3], (vals - mc) / (vals.std(-1, keepdim=True) + 1e-6), atol=1e-6)
        assert torch.allclose(boot[..., c::3], (vals - mc) / torch.sqrt(vals.var(-1, keepdim=True, unbiased=False) + 1e-5), atol=1e-6)
    mean, scale = patch_stats(p)
    assert torch.allclose(mae * scale + mean, p, atol=1e-5)
