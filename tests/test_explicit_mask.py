"""``MaskedModel.forward(batch, mask=...)``: an explicit boolean (B, N) map, True = hidden (as
Hugging Face's ``bool_masked_pos``), equal to the noise path when it is the mask the noise gives."""
from __future__ import annotations

import pytest
import torch

import mimkit
from mimkit.errors import ConfigError

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
    with pytest.raises(ConfigError, match=r"visible-only encoder needs the same number of hidden tokens.*\[48, 40\]"):
        model(batch, mask=hidden)
    with pytest.raises(ConfigError, match=r"boolean \(B, N\) = \(2, 64\)"):
        model(batch, mask=hidden[:, :10])
    with pytest.raises(ConfigError, match="boolean"):
        model(batch, mask=hidden.float())
    with pytest.raises(ConfigError, match="either noise or mask"):
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


def test_macrl_takes_one_map_per_view_or_one_for_both() -> None:
    """MACRL masks its two views with two maskers (ratios 0.75 and 0.5): ``mask=[high, low]``
    with the maps the noise gives is the noise path up to rounding (the kept tokens come in
    ascending order instead of the noise's; measured <= 2.4e-7 on the tiny preset's losses);
    one (B, N) map serves both views."""
    torch.manual_seed(0)
    model = mimkit.build({"method": "macrl_tiny_fashion_mnist", "model": {
        **SMALL, "projector": {"hidden_dim": 32, "out_dim": 16}, "infonce": {"queue": 0}}}).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(3, 1, 32, 32, generator=g), "image_target": torch.randn(3, 1, 32, 32, generator=g)}
    noise = model.masker.draw(3, torch.Generator().manual_seed(2), torch.device("cpu"))  # (3, 64 + 64)
    with torch.no_grad():
        a = model(batch, noise=noise)
        high, low = a.mask.hidden, a.extra["mask_low"].hidden
        b = model(batch, mask=[high, low])
        c = model(batch, mask=high)  # one map for both views
    assert high.sum(1).tolist() == [48] * 3 and low.sum(1).tolist() == [32] * 3
    assert torch.equal(b.mask.hidden, high) and torch.equal(b.extra["mask_low"].hidden, low)
    assert b.losses.keys() == a.losses.keys()
    for k in a.losses:
        torch.testing.assert_close(b.losses[k], a.losses[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-6)
    # the one-map form: the high view as before, the low view now hides the high view's 48 tokens
    assert torch.equal(c.extra["mask_low"].hidden, high)
    torch.testing.assert_close(c.losses["rec_high"], a.losses["rec_high"], rtol=0, atol=1e-6)
    assert abs(float(c.losses["rec_low"]) - float(a.losses["rec_low"])) > 1e-4
    uneven = low.clone()
    uneven[2, int(uneven[2].nonzero()[0])] = False
    with pytest.raises(ConfigError, match=r"mask\[1\] \(low-ratio view\).*same number of hidden tokens.*\[32, 32, 31\]"):
        model(batch, mask=[high, uneven])
    with pytest.raises(ConfigError, match=r"mask\[0\] \(high-ratio view\).*boolean \(B, N\) = \(3, 64\)"):
        model(batch, mask=[high[:, :10], low])
    with pytest.raises(ConfigError, match="a pair"):
        model(batch, mask=[high, low, low])
    with pytest.raises(ConfigError, match="either noise or mask"):
        model(batch, mask=[high, low], noise=noise)


def test_omnimae_takes_a_map_over_each_samples_tokens() -> None:
    """OmniMAE (images and clips in one batch, one group per frame count): the map is over the
    batch's tokens, an image row over its first 16 (one temporal slice); with the map the noise
    gives (``out.extra['hidden']``), the same masks, predictions and loss, bit for bit."""
    torch.manual_seed(0)
    model = mimkit.build({"method": "omnimae_tiny_fmnist_clips", "model": {
        "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
        "decoder_num_heads": 2}}).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 32, 32, generator=g)
    x[[0, 3], :, 2:] = 0  # two images padded to 8 frames, as the mixture does
    batch = {"video": x, "frames": torch.tensor([2, 8, 8, 2])}
    noise = torch.rand(4, 64, generator=g)
    with torch.no_grad():
        a = model(batch, noise=noise)
        hidden = a.extra["hidden"]
        b = model(batch, mask=hidden)
        images = {"video": x[[0, 3], :, 0]}  # a plain image batch: a (B, 16) map, or (B, 64) as the noise
        c = model(images, noise=noise[[0, 3]])
        d = model(images, mask=c.extra["hidden"])
        e = model(images, mask=torch.nn.functional.pad(c.extra["hidden"], (0, 48)))
    assert hidden.sum(1).tolist() == [12, 57, 57, 12] and not hidden[[0, 3], 16:].any()  # int(16*.75), int(64*.9)
    assert torch.equal(b.extra["hidden"], hidden) and torch.equal(b.loss, a.loss)
    for kind in ("image", "video"):
        assert torch.equal(b.extra[kind].mask.hidden, a.extra[kind].mask.hidden)
        assert torch.equal(b.extra[kind].pred, a.extra[kind].pred)
    assert c.extra["hidden"].shape == (2, 16) and torch.equal(d.loss, c.loss) and torch.equal(e.loss, c.loss)
    other = hidden.clone()  # each row's map shifted by one token within the sample's own tokens
    other[[1, 2]] = hidden[[1, 2]].roll(1, 1)
    other[[0, 3], :16] = hidden[[0, 3], :16].roll(1, 1)
    with torch.no_grad():
        assert abs(float(model(batch, mask=other).loss) - float(a.loss)) > 1e-4
    with pytest.raises(ConfigError, match=r"boolean \(B, N\) map.*B = 4 and N in \[64\].*\(4, 10\)"):
        model(batch, mask=hidden[:, :10])
    past = hidden.clone()
    past[0, 20] = True  # an image row hiding a token of the second temporal slice, which it does not have
    with pytest.raises(ConfigError, match=r"rows \[0\] hide tokens past their sample's own \(frames \[2\] -> \[16\]"):
        model(batch, mask=past)
    uneven = hidden.clone()
    uneven[1, int(uneven[1].nonzero()[0])] = False
    with pytest.raises(ConfigError, match=r"same number of hidden tokens.*8-frame samples hide \[56, 57\]"):
        model(batch, mask=uneven)
    with pytest.raises(ConfigError, match="either noise or mask"):
        model(batch, mask=hidden, noise=noise)


def test_igpt_bert_takes_a_map_over_the_pixel_sequence_and_ar_refuses_one() -> None:
    """iGPT BERT: a (B, L) map over the n_px^2 pixel tokens (rows may differ: the loss is a
    per-image mean) is the Bernoulli draw's path bit for bit; the AR objective has no mask."""
    torch.manual_seed(0)
    over = {"n_layer": 2, "n_embd": 32, "n_head": 2}
    model = mimkit.build({"method": "igpt_tiny_fashion_mnist", "model": {**over, "objective": "bert"}}).eval()
    torch.nn.init.normal_(model.encoder.wtet, std=0.5)  # zero-initialized: make the logits depend on the input
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(3, 1, 14, 14, generator=g)}
    noise = torch.rand(3, 196, generator=g)
    with torch.no_grad():
        a = model(batch, noise=noise)
        hidden = a.extra["hidden"]
        b = model(batch, mask=hidden)
        c = model(batch, mask=hidden.flip(1))
    assert hidden.sum(1).tolist() == [26, 31, 36]  # Bernoulli(0.15) of 196: counts differ per row
    assert torch.equal(b.extra["hidden"], hidden) and torch.equal(b.pred, a.pred) and torch.equal(b.loss, a.loss)
    ce = torch.nn.functional.cross_entropy(a.pred.flatten(0, 1), a.target.flatten(), reduction="none").view(3, 196)
    torch.testing.assert_close(a.loss, torch.stack([ce[i][hidden[i]].mean() for i in range(3)]).mean(),
                               rtol=1e-6, atol=1e-7)
    assert abs(float(c.loss) - float(a.loss)) > 1e-4
    with pytest.raises(ConfigError, match=r"boolean \(B, L\) = \(3, 196\).*got torch.bool \(3, 10\)"):
        model(batch, mask=hidden[:, :10])
    with pytest.raises(ConfigError, match=r"got torch.float32 \(3, 196\)"):
        model(batch, mask=hidden.float())
    with pytest.raises(ConfigError, match="either noise or mask"):
        model(batch, mask=hidden, noise=noise)
    ar = mimkit.build({"method": "igpt_tiny_fashion_mnist", "model": over}).eval()
    with pytest.raises(ConfigError, match="objective=ar has no mask"):
        ar(batch, mask=hidden)
