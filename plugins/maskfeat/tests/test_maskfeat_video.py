"""MaskFeat on video: the per-frame HOG target of the cubes against a direct computation, the
cube masker against SlowFast's MaskingGenerator3D rule, the [MASK]-token video encoder, and the
tiny moving Fashion-MNIST preset training (finite, falling, exact resume)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mimkit
import mimkit.testing as testing
from mimkit.plugin_api import ConfigError
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit_maskfeat.cube import cube_mask, upsample_mask


one_thread = pytest.fixture(autouse=True, scope="module")(testing.one_thread)  # tiny models: one thread



# ------------------------------------------------------------------------------------------------
# HOG of video cubes


def numpy_hog(frame: np.ndarray, nbins: int, cell: int) -> np.ndarray:
    """A direct NumPy HOG of one (C, H, W) frame (SlowFast HOGLayerC conventions, written from
    the formula, independent of the plugin's torch code): (C, nbins, H/cell, W/cell)."""
    c, h, w = frame.shape
    p = np.pad(frame.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    left, right = p[:, :, :-2], p[:, :, 2:]
    top, bottom = p[:, :-2, :], p[:, 2:, :]
    gx = (left[:, :-2] + 2 * left[:, 1:-1] + left[:, 2:]) - (right[:, :-2] + 2 * right[:, 1:-1] + right[:, 2:])
    gy = (top[:, :, :-2] + 2 * top[:, :, 1:-1] + top[:, :, 2:]) - (bottom[:, :, :-2] + 2 * bottom[:, :, 1:-1]
                                                                     + bottom[:, :, 2:])
    mag = np.sqrt(gx**2 + gy**2)
    bins = np.floor(np.arctan2(gx, gy) / np.pi * nbins).astype(np.int64) % nbins
    out = np.zeros((c, nbins, h // cell, w // cell))
    ch, ii, jj = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    np.add.at(out, (ch, bins, ii // cell, jj // cell), mag)
    return out / np.maximum(np.sqrt((out**2).sum(1, keepdims=True)), 1e-12)


def direct_video_target(video: torch.Tensor, pt: int, p: int, cell: int, frames: str) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, t*h*w, D): token (ti, hi, wi) gets, for each frame used, the values
    hog[c, bin, hi*k + r, wi*k + s] in (c, bin, r, s) order (k = p // cell cells per side)."""
    b, c, t_all, hgt, wid = video.shape
    k, nb = p // cell, 9
    used = range(0, pt) if frames == "all" else range(0, 1)
    rows = []
    for bi in range(b):
        hogs = [numpy_hog(video[bi, :, f].numpy(), nb, cell) for f in range(t_all)]
        tokens = []
        for ti in range(t_all // pt):
            for hi in range(hgt // p):
                for wi in range(wid // p):
                    vec = []
                    for f in used:
                        h = hogs[ti * pt + f]
                        vec += [h[ch, bn, hi * k + r, wi * k + s]
                                for ch in range(c) for bn in range(nb) for r in range(k) for s in range(k)]
                    tokens.append(vec)
        rows.append(tokens)
    return torch.tensor(rows, dtype=torch.float32)


def _int_video(b: int, c: int, t: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (b, c, t, s, s), generator=g).float()  # exact gradients: no bin ties by rounding


@pytest.mark.parametrize("frames", ["first", "all"])
def test_video_hog_target_equals_a_direct_per_frame_computation(frames: str) -> None:
    model = mimkit.build({"method": "maskfeat_tiny_moving_fmnist", "model": {"target": {"frames": frames}}})
    x = _int_video(2, 1, 8, 32)
    got = model.target({"video": x})
    want = direct_video_target(x, pt=2, p=8, cell=4, frames=frames)
    assert got.shape == (2, 64, 36 if frames == "first" else 72) and model.target.dim == got.shape[-1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if frames == "first":  # the second frame of every cube is ignored, as the official frames[:, :, ::2]
        y = x.clone()
        y[:, :, 1::2] = torch.rand_like(y[:, :, 1::2])
        assert torch.equal(model.target({"video": y}), got)


def test_video_hog_rgb_layout_is_the_official_unfold() -> None:
    """RGB, 16-px patches, 8-px cells (108 values per token, as the paper): the target equals
    SlowFast's ``_get_hog_label_3d`` layout written out (frames[:, :, ::2] -> per-frame HOG ->
    flatten(1, 2) -> permute -> unfold(2x2 cells) -> flatten -> view(B, T, h, w, -1))."""
    spec = {"method": "maskfeat_vit_base_patch16_k400",
            "data": {"img_size": 32, "num_frames": 4},
            "model": {"encoder": {"size": None, "embed_dim": 48, "depth": 1, "num_heads": 2}}}
    model = mimkit.build(spec)
    x = _int_video(2, 3, 4, 32, seed=3) - 2.5
    got = model.target({"video": x})
    assert model.target.dim == 108 and got.shape == (2, 2 * 2 * 2, 108)
    frames = x[:, :, ::2].transpose(1, 2)  # (B, T', C, H, W)
    b, t = frames.shape[:2]
    hog = torch.stack([torch.from_numpy(numpy_hog(f.numpy(), 9, 8)).float() for f in frames.flatten(0, 1)])
    hog = hog.flatten(1, 2)  # (B*T', C*nbins, 4, 4)
    label = hog.permute(0, 2, 3, 1).unfold(1, 2, 2).unfold(2, 2, 2)  # (B*T', 2, 2, C*nbins, 2, 2)
    label = label.flatten(3).view(b, t, 2, 2, -1).flatten(1, 3)  # (B, N, 108)
    torch.testing.assert_close(got, label, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Cube masking


class _Replay:
    """Python's ``random`` API (uniform, randint) on the same torch draws as the plugin, so the
    official generator written out below consumes the same random stream."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=self.g))

    def randint(self, a: int, b: int) -> int:
        return int(torch.randint(a, b + 1, (), generator=self.g))


def official_cube_mask(window, num_mask, min_area, max_area, rng, min_aspect=0.3):
    """SlowFast's ``MaskingGenerator3D.__call__`` written out (loops over voxels, as the official)."""
    tm, hm, wm = window
    mask = np.zeros(window, dtype=int)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_mask:
        left_over = num_mask - count
        delta = 0
        for _ in range(100):
            area = rng.uniform(min_area, max_area)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            t = rng.randint(1, tm)
            if w < wm and h < hm:
                top, left, front = rng.randint(0, hm - h), rng.randint(0, wm - w), rng.randint(0, tm - t)
                num_masked = mask[front:front + t, top:top + h, left:left + w].sum()
                if 0 < h * w * t - num_masked <= left_over:
                    for i in range(front, front + t):
                        for j in range(top, top + h):
                            for k in range(left, left + w):
                                if mask[i, j, k] == 0:
                                    mask[i, j, k] = 1
                                    delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def test_cube_mask_equals_the_official_generator_on_the_same_random_stream() -> None:
    for seed in range(20):
        ours = cube_mask((8, 7, 7), 157, torch.Generator().manual_seed(seed), min_area=9, max_area=49)
        ref = official_cube_mask((8, 7, 7), 157, 9, 49, _Replay(seed))
        assert np.array_equal(ours.numpy().astype(int), ref), seed


def test_paper_cube_masker_statistics() -> None:
    """The k400 preset: 8x7x7 window, round(392 * 0.4) = 157 units, each unit = 2x2 tokens at one
    time step of the 8x14x14 grid; blocks span 1..8 time steps (neither tubes nor frames)."""
    with torch.device("meta"):
        model = mimkit.build({"method": "maskfeat_vit_base_patch16_k400"})
    masker = model.masker
    assert (masker.window, masker.num_mask, masker.min_area, masker.max_area) == ((8, 7, 7), 157, 9, 49)
    assert model.encoder.grid == (8, 14, 14) and model.target.dim == 108
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([masker.sample_noise(g) for _ in range(300)]).view(300, 8, 14, 14)
    units = masks[:, :, ::2, ::2]  # one token per unit
    assert torch.equal(upsample_mask(units, (8, 14, 14)), masks)  # constant over each unit's 2x2 tokens
    counts = units.flatten(1).sum(1).float()
    assert counts.max() <= 157 and counts.min() >= 140
    assert counts.mean() > 155  # the generator rarely falls short (measured 156.5)
    # hidden regions extend over time, but not as whole tubes: some units are hidden at some time steps only
    per_unit = units.sum(1)  # (300, 7, 7) time steps hidden per spatial unit
    partial = ((per_unit > 0) & (per_unit < 8)).float().mean()
    assert 0.2 < partial < 0.8 and (per_unit == 8).any()
    # the official placement (front ~ U{0..8-t}) hides the middle time steps about twice as often as
    # the first and last ones (measured 0.24 / 0.51), symmetrically; the mean stays 0.4
    per_t = units.float().mean(dim=(0, 2, 3))
    assert torch.allclose(per_t, per_t.flip(0), atol=0.05)
    assert per_t[3:5].mean() > 1.6 * per_t[[0, 7]].mean()
    assert abs(float(per_t.mean()) - 0.4) < 0.01


def test_cube_masker_and_mask_token_encoder_contracts() -> None:
    check_component("maskfeat_tiny_moving_fmnist", "model.masker")
    enc = check_component("maskfeat_tiny_moving_fmnist", "model.encoder")
    assert enc.mask_token is not None and 0.005 < float(enc.mask_token.detach().std()) < 0.03  # trunc-normal 0.02


def test_cube_masker_refuses_a_visible_only_encoder() -> None:
    with pytest.raises(ConfigError, match="with_mask_token"):
        mimkit.build({"method": "maskfeat_tiny_moving_fmnist", "model": {"encoder": {"mode": "visible_only"}}})


# ------------------------------------------------------------------------------------------------
# Encoder and loss


def test_mask_token_encoder_and_loss_against_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = mimkit.build({"method": "maskfeat_tiny_moving_fmnist"}).eval()
    enc = model.encoder
    x = torch.randn(2, 1, 8, 32, 32)
    hidden = torch.stack([model.masker.sample_noise(torch.Generator().manual_seed(s)) for s in (1, 2)])
    hidden[1, int(hidden[1].nonzero()[0])] = False  # rows hiding different counts, as a short official mask
    assert hidden[0].sum() != hidden[1].sum()
    mask = model.masker({}, hidden)
    tokens = enc.embed(x, mask)  # (B, N, D): every position
    cubes = torch.nn.functional.conv3d(x, enc.patch_embed.weight, enc.patch_embed.bias, stride=(2, 8, 8))
    cubes = cubes.flatten(2).transpose(1, 2)  # (B, N, D)
    want = torch.where(hidden.unsqueeze(-1), enc.mask_token.expand_as(cubes), cubes) + enc.pos_embed
    torch.testing.assert_close(tokens, want, atol=1e-5, rtol=1e-5)
    out = model({"video": x}, noise=hidden)
    pred, target = out.pred, model.target({"video": x})
    direct = ((pred - target) ** 2).mean(-1)[hidden].mean()  # the official pred[mask] then a plain MSE mean
    torch.testing.assert_close(out.loss, direct, atol=1e-6, rtol=1e-6)
    explicit = model({"video": x}, mask=hidden)  # the core's explicit (B, N) map, counts may differ per row
    assert torch.equal(explicit.mask.hidden, hidden) and torch.equal(explicit.loss, out.loss)


def test_tiny_video_preset_trains(tmp_path) -> None:
    check_preset_trains("maskfeat_tiny_moving_fmnist", tmp_path,
                        tiny_overrides("maskfeat_tiny_moving_fmnist", limit=64, batch_size=16))
