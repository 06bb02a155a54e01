"""OmniMAE: image -> video padding, per-modality masking, the target, the seeded mixture
(sampling ratio, determinism), the tiny preset trains and resumes exactly across a mixture."""
from __future__ import annotations

import pytest
import torch

import mimkit
from mimkit.config import structure
from mimkit.plugin_api import SeededDataset, registry
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit_omnimae import Mixture, pad_im2video


def _mixture(**cfg) -> Mixture:
    base = {"datasets": [{"name": "fashion_mnist", "channels": 3, "limit": 40},
                         {"name": "moving_fashion_mnist", "num_frames": 8, "limit": 40}], "video_frames": 8}
    return Mixture(structure(Mixture.Config, {**base, **cfg}, "data"))


def _model(**over):
    return mimkit.build({"method": "omnimae_tiny_fmnist_clips", "model": over})


def test_image_becomes_a_two_frame_video_and_is_padded_in_the_mixture():
    img = torch.randn(2, 3, 32, 32)
    vid = pad_im2video(img)
    assert vid.shape == (2, 3, 2, 32, 32) and torch.equal(vid[:, :, 0], img) and torch.equal(vid[:, :, 1], img)
    mix = _mixture()
    item = mix.as_video({"image": img[0], "label": 3})
    assert item["frames"] == 2 and item["video"].shape == (3, 8, 32, 32) and item["label"] == 3
    assert torch.equal(item["video"][:, 0], img[0]) and torch.equal(item["video"][:, 1], img[0])
    assert not item["video"][:, 2:].any()  # zero padding, cropped off by the model
    # the model sees the same thing from a plain image batch, a 2-frame video, or a padded mixture item
    model = _model().eval()
    noise = torch.rand(2, model.num_patches)
    with torch.no_grad():
        a = model({"video": img}, noise=noise)
        b = model({"video": vid}, noise=noise)
        padded = torch.stack([mix.as_video({"image": im})["video"] for im in img])
        c = model({"video": padded, "frames": torch.tensor([2, 2])}, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.loss, c.loss)


def test_masking_ratio_per_modality_and_per_channel_target():
    model = _model().eval()  # image ratio 0.75 of 16 tokens, video ratio 0.9 of 64 tokens
    x = torch.randn(4, 3, 8, 32, 32)
    frames = torch.tensor([2, 8, 8, 2])
    with torch.no_grad():
        out = model({"video": x, "frames": frames}, noise=torch.rand(4, 64))
    img, vid = out.extra["image"], out.extra["video"]
    assert img.mask.hidden.shape == (2, 16) and bool((img.mask.hidden.sum(1) == int(16 * 0.75)).all())
    assert vid.mask.hidden.shape == (2, 64) and bool((vid.mask.hidden.sum(1) == int(64 * 0.9)).all())
    keep = vid.mask.ids_keep
    assert bool((keep[:, 1:] > keep[:, :-1]).all())  # kept tokens in position order (boolean indexing)
    # the loss is the sample-weighted mean of the two groups' masked MSEs
    assert torch.allclose(out.loss, 0.5 * img.loss + 0.5 * vid.loss)
    # per-cube, per-channel normalized target of the un-normalized pixels (unbiased var, eps in the sqrt)
    t = vid.target.view(2, 64, 2 * 8 * 8, 3)
    assert torch.allclose(t.mean(2), torch.zeros(2, 64, 3), atol=1e-5)
    assert torch.allclose(t.var(2), torch.ones(2, 64, 3), atol=1e-3)
    direct = ((vid.pred - vid.target) ** 2).mean(-1)
    assert torch.allclose(vid.loss, (direct * vid.mask.hidden).sum() / vid.mask.hidden.sum())


def test_mixture_sampling_ratio_and_per_item_seeds():
    mix = _mixture(weights=[0.25, 0.75], length=3000)
    seeded = SeededDataset(mix, seed=7)
    sources = []
    for i in range(3000):
        with torch.random.fork_rng(devices=[]):
            from mimkit.plugin_api import seed_for

            torch.manual_seed(seed_for(7, 0, i, 0))  # what the seeded loader does before each item
            sources.append(mix.pick()[0])
    frac = sum(1 for s in sources if s == 0) / len(sources)
    assert abs(frac - 0.25) < 0.03
    a, b = seeded[5], SeededDataset(_mixture(weights=[0.25, 0.75], length=3000), seed=7)[5]
    assert a["source"] == b["source"] and torch.equal(a["video"], b["video"])  # a pure function of (seed, epoch, i)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(seeded[5]["video"], a["video"])
    seeded.set_epoch(1)
    assert [seeded[i]["source"] for i in range(40)] != [a_["source"] for a_ in (SeededDataset(mix, 7)[i] for i in range(40))]
    default = _mixture()
    assert torch.allclose(default.probs, torch.tensor([0.5, 0.5], dtype=torch.float64))  # proportional to sizes
    with pytest.raises(mimkit.plugin_api.ConfigError, match="weights"):
        _mixture(weights=[1.0])


def test_tiny_preset_trains_and_resumes_exactly_across_a_mixture(tmp_path):
    over = tiny_overrides("omnimae_tiny_fmnist_clips", limit=48, batch_size=16)
    over["data"].update(limit=48, length=64)
    # each batch draws a different image/clip mix, so the loss level moves with it: no fall check in 4 steps
    check_preset_trains("omnimae_tiny_fmnist_clips", tmp_path, over, steps=4, expect_fall=False)
    assert "mixture" in registry().names("datasets")
