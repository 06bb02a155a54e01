"""MaskFeat's block masks as SlowFast's MaskingGenerator makes them (num_mask = round(0.4 N),
min_num_patches = num_mask // 5, no top-up): the count distribution against the official
generator written out from its formulas; the [MASK] token's init; an explicit mask."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import mimkit


class OfficialMaskingGenerator:
    """SlowFast ``datasets/transform.py`` ``MaskingGenerator``, written from its formulas
    (Python ``random``, numpy mask)."""

    def __init__(self, size, num_mask, min_num_patches=16, max_num_patches=None, min_aspect=0.3):
        self.height = self.width = size
        self.num_mask = num_mask
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_mask if max_num_patches is None else max_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect = math.exp(random.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top, left = random.randint(0, self.height - h), random.randint(0, self.width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    delta += int((mask[top : top + h, left : left + w] == 0).sum())
                    mask[top : top + h, left : left + w] = 1
                if delta > 0:
                    break
        return delta

    def __call__(self):
        mask = np.zeros((self.height, self.width), dtype=int)
        count = 0
        while count < self.num_mask:
            delta = self._mask(mask, min(self.num_mask - count, self.max_num_patches))
            if delta == 0:
                break
            count += delta
        return mask


@pytest.fixture(scope="module")
def model():
    return mimkit.build({"method": "maskfeat_vit_base_patch16",
                         "model": {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3}}})


def test_block_mask_counts_follow_the_official_generator(model) -> None:
    masker = model.masker
    assert (masker.num_hidden, masker.min_num_patches) == (78, 15)  # round(196 * 0.4), 78 // 5
    g = torch.Generator().manual_seed(0)
    ours = np.array([int(masker.sample_noise(g).sum()) for _ in range(2000)])
    random.seed(0)
    gen = OfficialMaskingGenerator(14, 78, min_num_patches=15)
    ref = np.array([int(gen().sum()) for _ in range(2000)])
    assert ours.max() <= 78 and ref.max() <= 78
    # official: about 77.56 on average, about 29% of the masks 1-2 patches short
    assert abs(ours.mean() - ref.mean()) < 0.08, (ours.mean(), ref.mean())
    assert abs(ref.mean() - 77.56) < 0.08
    short = lambda c: float(((c >= 76) & (c < 78)).mean())  # noqa: E731
    assert abs(short(ours) - short(ref)) < 0.04 and 0.2 < short(ref) < 0.38
    assert abs(float((ours == 78).mean()) - float((ref == 78).mean())) < 0.04


def test_unequal_counts_reach_the_loss_pooled_over_the_batch(model) -> None:
    m = model.eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    hidden = torch.zeros(2, 196, dtype=torch.bool)
    hidden[0, :78] = True
    hidden[1, 100:176] = True  # 76 hidden: an official mask 2 short
    out = m({"image": x}, noise=hidden)  # a boolean map is an explicit mask (True = hidden)
    assert torch.equal(out.mask.hidden, hidden)
    per_tok = ((out.pred - out.target) ** 2).mean(-1)
    torch.testing.assert_close(out.loss, per_tok[hidden].mean())  # the official mean over masked tokens
    # the [MASK] token replaced exactly the hidden patches: a visible patch's pixels change nothing hidden
    assert m.encoder.mask_token is not None


def test_mask_token_is_trunc_normal_002() -> None:
    torch.manual_seed(0)
    m = mimkit.build({"method": "maskfeat_vit_base_patch16", "model": {"encoder": {"depth": 1}}})
    t = m.encoder.mask_token.detach()
    assert float(t.std()) == pytest.approx(0.02, rel=0.1) and float(t.abs().max()) < 0.1


def test_predict_masked_refuses_unequal_counts(model) -> None:
    m = mimkit.build({"method": "maskfeat_vit_base_patch16",
                      "model": {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3}, "decoder": {"predict": "masked"}}})
    hidden = torch.zeros(2, 196, dtype=torch.bool)
    hidden[0, :78], hidden[1, :76] = True, True
    with pytest.raises(ValueError, match="exact: true"):
        m({"image": torch.rand(2, 3, 224, 224)}, noise=hidden)
