"""MRA: the attention-guided mask keeps the most-attended patches; the rest is reconstructed."""
from __future__ import annotations

import pytest
import torch

from mimkit.api import build
from mimkit.plugin_api import cls_attention, patchify
from mimkit_mra import MaskReconstruct, attention_mask, mask_reconstruct_batch

SMALL = {"method": "mae_tiny_fashion_mnist",
         "model": {"encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2},
                   "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}}}


def _mae():
    torch.manual_seed(0)
    return build(SMALL).eval()


def test_high_attention_patches_stay_visible():
    mae = _mae()
    x = torch.randn(3, 1, 32, 32)
    mask = attention_mask(mae.encoder, x, 0.75)
    tokens = mae.encoder.vit.blocks[0](mae.encoder.embed(x, None))
    attn = cls_attention(mae.encoder.vit.blocks[-1], tokens)  # (B, 64), direct
    top = attn.topk(16, dim=1).indices
    for b in range(3):
        assert set(top[b].tolist()) == set((~mask.hidden[b]).nonzero().flatten().tolist())


def test_transform_keeps_visible_pixels_and_replaces_the_rest():
    mae = _mae()
    x = torch.randn(4, 1, 32, 32)
    out = mask_reconstruct_batch(mae, x, ratio=0.5, p=1.0)
    mask = attention_mask(mae.encoder, x, 0.5)
    same = (patchify(out, 4) == patchify(x, 4)).all(-1)  # (B, N)
    assert torch.equal(same, ~mask.hidden)
    # the replaced patches are the decoder's norm-pix prediction mapped back with the patch's own stats
    with torch.no_grad():
        pred = mae.decoder(mae.encoder.encode(mae.encoder.embed(x, mask), mask), mask)
    orig = patchify(x, 4)
    mean, std = orig.mean(-1, keepdim=True), (orig.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(patchify(out, 4)[mask.hidden], (pred * std + mean)[mask.hidden])
    # p = 0 is the identity; p = 0.5 replaces about half the images
    assert torch.equal(mask_reconstruct_batch(mae, x, 0.5, 0.0), x)
    t = MaskReconstruct(mae, 0.5, 0.5, seed=0)
    many = t(x.repeat(16, 1, 1, 1))
    changed = (many != x.repeat(16, 1, 1, 1)).flatten(1).any(1).float().mean()
    assert 0.3 < float(changed) < 0.7
    assert t(x[0]).shape == x[0].shape
    assert all(not p.requires_grad for p in t.mae.parameters())


def test_bad_ratio_and_p():
    mae = _mae()
    with pytest.raises(ValueError, match="ratio"):
        MaskReconstruct(mae, 1.0, 0.5)
    with pytest.raises(ValueError, match="p must"):
        MaskReconstruct(mae, 0.5, 1.5)
