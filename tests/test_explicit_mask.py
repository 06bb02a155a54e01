"""``MaskedModel.forward(batch, mask=...)``: an explicit boolean (B, N) map, True = hidden (as
Hugging Face's ``bool_masked_pos``), equal to the noise path when it is the mask the noise gives."""
from __future__ import annotations

import pytest
import torch

import mimkit

SMALL = {"encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}}


@pytest.mark.parametrize("preset", ["mae_tiny_fashion_mnist", "supmae_tiny_fashion_mnist"])
def test_explicit_mask_equals_the_noise_path(preset: str) -> None:
    torch.manual_seed(0)
    model = mimkit.build({"method": preset, "model": SMALL}).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(3, 1, 32, 32, generator=g), "label": torch.tensor([0, 3, 7])}
    noise = torch.rand(3, 64, generator=g)
    with torch.no_grad():
        a = model(batch, noise=noise)
        b = model(batch, mask=a.mask.hidden)
    assert int(a.mask.hidden.sum()) == 3 * 48  # ratio 0.75 of 64 tokens
    assert torch.equal(b.mask.hidden, a.mask.hidden)
    # the kept tokens are in another order (ascending vs noise order): the same values up to rounding
    torch.testing.assert_close(b.pred, a.pred, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)
    assert b.losses.keys() == a.losses.keys()
    for k in a.losses:
        torch.testing.assert_close(b.losses[k], a.losses[k], rtol=0, atol=1e-6)
    # the loss reads the explicit map: a different map gives a different loss
    with torch.no_grad():
        c = model(batch, mask=a.mask.hidden.flip(1))
    assert abs(float(c.loss) - float(a.loss)) > 1e-4


def test_explicit_mask_is_checked() -> None:
    model = mimkit.build({"method": "mae_tiny_fashion_mnist", "model": SMALL}).eval()
    batch = {"image": torch.randn(2, 1, 32, 32)}
    hidden = torch.zeros(2, 64, dtype=torch.bool)
    hidden[0, :48], hidden[1, :40] = True, True
    with pytest.raises(ValueError, match=r"visible-only encoder needs the same number of hidden tokens.*\[48, 40\]"):
        model(batch, mask=hidden)
    with pytest.raises(ValueError, match=r"boolean \(B, N\) = \(2, 64\)"):
        model(batch, mask=hidden[:, :10])
    with pytest.raises(ValueError, match="boolean"):
        model(batch, mask=hidden.float())
    with pytest.raises(ValueError, match="either noise or mask"):
        model(batch, mask=hidden, noise=torch.rand(2, 64))


def test_with_mask_token_encoders_take_unequal_counts() -> None:
    """MaskFeat (with_mask_token): rows hiding different counts; the loss is the official mean
    over every hidden token of the batch, equal to the noise-path value for the same map."""
    torch.manual_seed(0)
    model = mimkit.build({"method": "maskfeat_tiny_fashion_mnist",
                          "model": {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3}}}).eval()
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[0, :5], hidden[1, 3:12] = True, True
    batch = {"image": torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))}
    with torch.no_grad():
        a = model(batch, mask=hidden)
        b = model(batch, noise=hidden)  # the block masker's own explicit-map path
        pred, target = a.pred, a.target
    assert torch.equal(a.mask.hidden, hidden)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    ref = ((pred - target) ** 2).mean(-1)[hidden].mean()
    torch.testing.assert_close(a.loss, ref, rtol=1e-6, atol=1e-7)


def test_a_masker_that_corrupts_the_input_refuses_a_token_mask() -> None:
    model = mimkit.build({"method": "mfm_tiny_fashion_mnist", "model": {"encoder": {"embed_dim": 48, "depth": 1,
                                                                                    "num_heads": 3}}}).eval()
    with pytest.raises(ValueError, match="corrupts the input"):
        model({"image": torch.randn(2, 1, 32, 32)}, mask=torch.zeros(2, 64, dtype=torch.bool))


@pytest.mark.parametrize("preset", ["flip_tiny_fashion_mnist", "milan_tiny_fashion_mnist",
                                    "siamese_mim_tiny_fashion_mnist"])
def test_method_models_take_an_explicit_mask(preset: str) -> None:
    """Whole-method models with a visible-only encoder take ``mask=`` too (the core's
    ``explicit_mask``): the same loss as the noise path for the map it gives."""
    from mimkit.api import build_dataset
    from mimkit.config import deep_merge
    from mimkit.data import collate
    from mimkit.testing import tiny_overrides

    torch.manual_seed(0)
    recipe = mimkit.resolve(deep_merge({"method": preset}, tiny_overrides(preset, limit=8)))
    model = mimkit.api.build_model(recipe).eval()
    ds = build_dataset(recipe, train=False)
    batch = collate([ds[i] for i in range(3)])
    batch.pop("_skipped", None)
    n = model.masker.num_tokens
    noise = model.masker.draw(3, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        a = model(batch, noise=noise)
        b = model(batch, mask=a.mask.hidden)
    assert 0 < int(a.mask.hidden.sum()) < 3 * n and torch.equal(b.mask.hidden, a.mask.hidden)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)
    uneven = a.mask.hidden.clone()
    uneven[0, int(uneven[0].nonzero()[0])] = False  # row 0 hides one token fewer
    with pytest.raises(ValueError, match="same number of hidden tokens"):
        model(batch, mask=uneven)


def test_sdae_takes_an_explicit_mask_and_orders_its_folds_by_the_noise() -> None:
    """SdAE splits the hidden ids into teacher folds in the order of the masker's mask for the
    step's noise (or ``ctx.generator``'s draw): with the map the noise gives, ``mask=`` plus the same
    ``noise`` is the noise path; with the map alone, a seeded generator fixes the folds."""
    from mimkit.types import Context

    torch.manual_seed(0)
    model = mimkit.build({"method": "sdae_tiny_fashion_mnist", "model": SMALL}).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(3, 1, 32, 32, generator=g)}
    noise = torch.rand(3, 64, generator=g)
    with torch.no_grad():
        a = model(batch, noise=noise)
        b = model(batch, noise=noise, mask=a.mask.hidden)
        c1 = model(batch, Context(generator=torch.Generator().manual_seed(2)), mask=a.mask.hidden)
        c2 = model(batch, Context(generator=torch.Generator().manual_seed(2)), mask=a.mask.hidden)
    assert torch.equal(b.mask.hidden, a.mask.hidden) and torch.equal(b.extra["fold_ids"], a.extra["fold_ids"])
    torch.testing.assert_close(b.pred, a.pred, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)
    assert torch.equal(c1.mask.hidden, a.mask.hidden) and torch.equal(c1.extra["fold_ids"], c2.extra["fold_ids"])
    assert not torch.equal(c1.extra["fold_ids"], a.extra["fold_ids"])  # other randomness, other folds
    uneven = a.mask.hidden.clone()
    uneven[0, int(uneven[0].nonzero()[0])] = False
    with pytest.raises(ValueError, match="same number of hidden tokens"):
        model(batch, mask=uneven)
