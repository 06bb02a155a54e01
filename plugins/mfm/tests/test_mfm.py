"""MFM plugin tests: the frequency masker, the loss, the decoders/encoders, a short training."""
from __future__ import annotations

from types import SimpleNamespace

import torch

import mimkit
from mimkit.components import BuildEnv
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit.types import Mask, Outputs
from mimkit_mfm.frequency import (FrequencyDistance, FrequencyMasker, frequency_filter, removed_frequencies,
                                  spectrum)

TINY = "mfm_tiny_fashion_mnist"


def _masker(**over) -> FrequencyMasker:
    env = BuildEnv(registry=None, encoder=SimpleNamespace(num_patches=4))
    cfg = FrequencyMasker.Config(**({"mean": [0.5], "std": [0.25]} | over))
    return FrequencyMasker(cfg, env)


def test_lowpass_plus_highpass_gives_back_the_image() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    low = removed_frequencies(16, 16, 4, None, lowpass=True)
    high = removed_frequencies(16, 16, 4, None, lowpass=False)
    assert torch.equal(low, ~high)
    torch.testing.assert_close(frequency_filter(x, low) + frequency_filter(x, high), x, atol=1e-5, rtol=0)


def test_radius_is_strict_around_the_shifted_centre() -> None:
    removed = removed_frequencies(32, 32, 3, None, lowpass=True)  # (32, 32)
    kept = (~removed).nonzero().tolist()
    # d^2 < 9 around (16, 16): offsets with dy^2 + dx^2 in {0, 1, 2, 4, 5, 8}
    assert len(kept) == 1 + 4 + 4 + 4 + 8 + 4
    assert all((y - 16) ** 2 + (x - 16) ** 2 < 9 for y, x in kept)
    assert removed[16, 19] and not removed[16, 18]  # d = 3 removed (strict), d = 2 kept
    band = removed_frequencies(32, 32, 3, 6, lowpass=True)  # removes 3 <= d < 6 only
    assert not band[16, 16] and band[16, 19] and band[16, 21] and not band[16, 22] and not band[0, 0]


def test_masker_low_high_choice_and_outputs() -> None:
    m = _masker(radius=3.0, p_lowpass=0.3)
    x01 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    batch = {"image": (x01 - 0.5) / 0.25}
    mask = m(batch, torch.tensor([[0.29], [0.31]]))  # first low-pass, second high-pass
    low = removed_frequencies(16, 16, 3.0, None, lowpass=True)
    assert isinstance(mask, Mask) and not mask.hidden.any() and mask.num_keep == 4
    assert torch.equal(mask.domain_mask[0, 0], low) and torch.equal(mask.domain_mask[1, 0], ~low)
    want = (frequency_filter(x01, torch.stack([low, ~low]).unsqueeze(1)).clamp(0, 1) - 0.5) / 0.25
    torch.testing.assert_close(mask.corrupted, want)
    # the probability of low-pass is p_lowpass
    g = torch.Generator().manual_seed(2)
    noise = m.draw(2000, g, torch.device("cpu"))  # (2000, 1)
    removed = m.removed(noise, 16, 16)
    frac_low = float((removed[:, 0, 8, 8] == 0).float().mean())  # DC kept <=> low-pass
    assert abs(frac_low - 0.3) < 0.04


def _outputs(pred: torch.Tensor, x: torch.Tensor, removed: torch.Tensor) -> Outputs:
    b, c, h, w = x.shape
    mask = Mask.none(b, 4)
    mask.domain_mask = removed.expand(b, c, h, w)
    return Outputs(pred=pred, target=spectrum(x), mask=mask)


def test_loss_zero_for_perfect_prediction_and_blind_to_kept_frequencies() -> None:
    loss = FrequencyDistance(FrequencyDistance.Config())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    removed = torch.stack([removed_frequencies(16, 16, 4, None, True), removed_frequencies(16, 16, 4, None, False)])
    removed = removed.unsqueeze(1)  # (2, 1, 16, 16)
    assert float(loss(_outputs(x.clone(), x, removed), {})) < 1e-5  # sqrt(1e-12) per frequency
    pred = torch.randn(2, 3, 16, 16, generator=g)
    base = loss(_outputs(pred, x, removed), {})
    noise = torch.randn(2, 3, 16, 16, generator=g)
    at_kept = frequency_filter(noise, removed)  # a real perturbation living on kept frequencies only
    at_removed = frequency_filter(noise, ~removed)
    torch.testing.assert_close(loss(_outputs(pred + at_kept, x, removed), {}), base, atol=1e-5, rtol=1e-5)
    assert abs(float(loss(_outputs(pred + at_removed, x, removed), {})) - float(base)) > 1e-2
    # the average is pooled over all removed frequencies of the batch and the channels
    diff = (spectrum(pred) - spectrum(x)).pow(2).sum(-1).add(1e-12).sqrt()
    r = removed.expand_as(diff)
    torch.testing.assert_close(base, diff[r].mean())
    focal = FrequencyDistance(FrequencyDistance.Config(with_matrix=True))
    assert float(focal(_outputs(pred, x, removed), {})) < float(base)  # weights in [0, 1]


def test_tiny_preset_shapes_and_resnet_encoder() -> None:
    model = mimkit.build({"method": TINY})
    out = model({"image": torch.randn(2, 1, 32, 32)})
    assert out.pred.shape == (2, 1, 32, 32) and out.target.shape == (2, 1, 32, 32, 2)
    assert out.mask.domain_mask.shape == (2, 1, 32, 32) and torch.isfinite(out.loss)
    cnn = mimkit.build({"model": {
        "name": "masked", "encoder": {"name": "resnet", "model": "resnet18", "img_size": 64, "in_chans": 1},
        "masker": {"name": "frequency", "radius": 4, "p_lowpass": 0.3, "mean": [0.286], "std": [0.353]},
        "target": {"name": "frequency"}, "decoder": {"name": "linear_pixelshuffle"},
        "losses": {"rec": {"name": "frequency_distance"}}}})
    assert cnn.encoder.patch == (1, 32, 32) and cnn.decoder.stride == 32
    out = cnn({"image": torch.randn(2, 1, 64, 64)})
    assert out.latent.shape == (2, 4, 512) and out.pred.shape == (2, 1, 64, 64)
    out.loss.backward()
    assert cnn.encoder.net.conv1.weight.grad is not None
    assert cnn.features(torch.randn(2, 1, 64, 64)).shape == (2, 512)


def test_presets_build() -> None:
    with torch.device("meta"):  # the settings, not the weights
        vit = mimkit.build({"method": "mfm_vit_base_patch16"})
        rn = mimkit.build({"method": "mfm_resnet50"})
    assert vit.masker.config.p_lowpass == 0.5 and vit.masker.config.radius == 16
    assert vit.decoder.stride == 16 and vit.encoder.config.mode == "full"
    assert rn.masker.config.p_lowpass == 0.3 and rn.encoder.embed_dim == 2048 and rn.decoder.stride == 32


def test_frequency_decoder_contract() -> None:
    check_component(TINY, "model.decoder")


def test_tiny_preset_lowers_the_loss_by_a_fifth_and_resumes_exactly(tmp_path) -> None:
    """One batch of 32 images, 6 steps (other crops and filters every step): the frequency
    distance falls by more than a fifth (0.59 -> 0.37 measured); resuming from step 3 is exact."""
    check_preset_trains(TINY, tmp_path, tiny_overrides(TINY, limit=32, batch_size=32), steps=6, min_drop=0.2)
