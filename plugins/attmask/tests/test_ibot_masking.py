"""iBOT's own masks (``ibot_block`` / ``ibot_rand``) against a reference written here from
bytedance/ibot's ``loader.py`` (``ImageFolderMask.get_pred_ratio`` and the ``block`` / ``rand``
branches of ``__getitem__``): the count distribution, exact masks from the documented seeding,
the ratio draws, ``pred_start_epoch``, config errors, and the ``ibot`` model on masks of unequal
counts."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import mimkit
from mimkit.components import BuildEnv
from mimkit.errors import ConfigError
from mimkit.types import Context
from mimkit_attmask import IBOTBlockMasker, IBOTLoss, IBOTRandMasker, draw_pred_ratio

SIDE = 14  # ViT-S/16 at 224: a 14 x 14 grid
N = SIDE * SIDE
TINY = "ibot_tiny_fashion_mnist"


class _Enc:
    def __init__(self, side: int = SIDE, mode: str = "with_mask_token"):
        self.grid, self.num_patches = (1, side, side), side * side
        self.config = type("C", (), {"mode": mode})


def block(side: int = SIDE, **kw) -> IBOTBlockMasker:
    return IBOTBlockMasker(IBOTBlockMasker.Config(**kw), BuildEnv(registry=None, encoder=_Enc(side)))


def rand(**kw) -> IBOTRandMasker:
    return IBOTRandMasker(IBOTRandMasker.Config(**kw), BuildEnv(registry=None, encoder=_Enc()))


# -- the reference: loader.py's loop, written out with numpy as the official code -------------

def ref_ratio(rng: random.Random, ratio, var) -> float:
    """get_pred_ratio (after pred_start_epoch), lists already normalized as __init__ does."""
    if isinstance(ratio, list):
        draws = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in zip(ratio, var)]
        return rng.choice(draws)
    return rng.uniform(ratio - var, ratio + var) if var > 0 else ratio


def ref_block(H: int, W: int, high: float, rng: random.Random, aspect=(0.3, 1 / 0.3)) -> np.ndarray:
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    mask = np.zeros((H, W), dtype=bool)
    count = 0
    while count < high:
        max_patches = high - count
        delta = 0
        for _ in range(10):
            low = (min(H, W) // 3) ** 2
            area = rng.uniform(low, max_patches)
            ar = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if w < W and h < H:
                top, left = rng.randint(0, H - h), rng.randint(0, W - w)
                if 0 < h * w - mask[top : top + h, left : left + w].sum() <= max_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i, j]:
                                mask[i, j] = True
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def seed_of(g: torch.Generator) -> int:
    """The documented seeding: one 63-bit draw from the loader's generator seeds random.Random."""
    return int(torch.randint(0, 2**63 - 1, (), generator=g))


# -- tests ------------------------------------------------------------------------------------

def test_block_count_distribution_matches_the_official_loop() -> None:
    """2000 masks at the official default (ratio 0.3, 14 x 14: budget 58.8, so at most 58) against
    10000 from the reference loop: mean count and share short of 58. Deterministic seeds; the
    tolerances are ~3.5 standard errors of the difference (0.03 and 0.012), well under what a
    rounded budget (+1.1 mean), BEiT's min_num_patches 11 (+0.22, -0.08 share) or aspect range
    [0.5, 2] (-0.13, +0.04) would shift."""
    m = block()
    counts = np.array([int(m.sample_noise(torch.Generator().manual_seed(s)).sum()) for s in range(2000)])
    ref = np.array([ref_block(SIDE, SIDE, 0.3 * N, random.Random(10**6 + s)).sum() for s in range(10000)])
    assert counts.max() <= 58 and ref.max() <= 58  # never above the float budget
    assert abs(ref.mean() - 57.26) < 0.05 and abs((ref < 58).mean() - 0.415) < 0.02  # the measured reference
    assert abs(counts.mean() - ref.mean()) < 0.1, (counts.mean(), ref.mean())
    assert abs((counts < 58).mean() - (ref < 58).mean()) < 0.035, ((counts < 58).mean(), (ref < 58).mean())


@pytest.mark.parametrize("side, kw", [
    (SIDE, {}), (SIDE, {"pred_ratio": [0.0, 0.3], "pred_ratio_var": [0.0, 0.2]}),
    (SIDE, {"pred_ratio": 0.4, "pred_ratio_var": 0.1, "pred_aspect_ratio": (0.5, 2.0)}),
    (6, {"pred_ratio": 0.7, "pred_ratio_var": 0.2}),  # blocks as tall or wide as the grid are refused
], ids=["default", "vit_s16_run", "var_aspect", "6x6_large"])
def test_every_block_mask_is_the_reference_from_its_seed(side, kw) -> None:
    m = block(side, **kw)
    ratio, var = kw.get("pred_ratio", 0.3), kw.get("pred_ratio_var", 0.0)
    aspect = kw.get("pred_aspect_ratio", (0.3, 1 / 0.3))
    empty = 0
    for s in range(150):
        got = m.sample_noise(torch.Generator().manual_seed(s))
        assert torch.equal(got, m.sample_noise(torch.Generator().manual_seed(s)))  # reproducible
        rng = random.Random(seed_of(torch.Generator().manual_seed(s)))
        want = ref_block(side, side, ref_ratio(rng, ratio, var) * side * side, rng, aspect)
        assert np.array_equal(got.view(side, side).numpy(), want), s
        empty += int(not want.any())
    if isinstance(ratio, list):  # half the crops draw ratio 0
        assert 50 < empty < 100


def test_rand_hides_exactly_int_of_r_times_n_uniformly() -> None:
    m = rand()
    masks = torch.stack([m.sample_noise(torch.Generator().manual_seed(s)) for s in range(2000)]).float()
    assert set(masks.sum(1).tolist()) == {float(int(0.3 * N))}  # 58 in every mask
    freq = masks.mean(0)  # each token hidden with probability 58 / 196 (sd 0.010 at 2000 masks)
    assert float((freq - 58 / N).abs().max()) < 0.045
    chi2 = float(((masks.sum(0) - 2000 * 58 / N) ** 2 / (2000 * 58 / N)).sum())
    assert chi2 < 280  # 195 degrees of freedom (p ~ 1e-4 at 280)


def test_ratio_draws_per_crop() -> None:
    rng = random.Random(0)
    r = np.array([draw_pred_ratio(rng, [0.3], [0.2]) for _ in range(5000)])
    assert r.min() >= 0.1 and r.max() <= 0.5 and r.min() < 0.101 and r.max() > 0.499
    assert abs(r.mean() - 0.3) < 0.005 and abs(np.quantile(r, 0.25) - 0.2) < 0.01 and abs(np.quantile(r, 0.75) - 0.4) < 0.01
    r = np.array([draw_pred_ratio(rng, [0.0, 0.3], [0.0, 0.2]) for _ in range(5000)])
    assert abs((r == 0).mean() - 0.5) < 0.03
    assert r[r > 0].min() >= 0.1 and r[r > 0].max() <= 0.5 and abs(r[r > 0].mean() - 0.3) < 0.01
    # through ibot_rand: the count is int(r * N) of the crop's own draw, r in range
    m = rand(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    counts = []
    for s in range(300):
        c = int(m.sample_noise(torch.Generator().manual_seed(s)).sum())
        rng = random.Random(seed_of(torch.Generator().manual_seed(s)))
        assert c == int(ref_ratio(rng, [0.0, 0.3], [0.0, 0.2]) * N)
        counts.append(c)
    assert all(c == 0 or int(0.1 * N) <= c <= int(0.5 * N) for c in counts) and len(set(counts)) > 30
    # a one-element list is a scalar, one variance serves every ratio (ImageFolderMask.__init__)
    assert (rand(pred_ratio=[0.3], pred_ratio_var=[0.1]).ratios, rand(pred_ratio=[0.2, 0.4], pred_ratio_var=0.1).variances) \
        == ([0.3], [0.1, 0.1])


def test_pred_start_epoch_masks_nothing_before_and_shifts_the_patch_temperature() -> None:
    m = block(pred_start_epoch=3)
    noise = m.draw(4, torch.Generator().manual_seed(0), torch.device("cpu"))  # (4, N) bool
    assert noise.any()
    assert not m({}, noise, Context(epoch=2)).hidden.any()
    assert torch.equal(m({}, noise, Context(epoch=3)).hidden, noise)
    # official iBOTLoss(mim_start_epoch=3): warm-up value, then linspace(0.04, 0.07, 30), then 0.07
    table = np.concatenate((np.ones(3) * 0.04, np.linspace(0.04, 0.07, 30), np.ones(50 - 30 - 3) * 0.07))
    loss = IBOTLoss(8, warmup_epochs=30, mim_start_epoch=3)
    assert np.allclose([loss.temperatures(e)[1] for e in range(50)], table, atol=1e-12)
    assert np.allclose([loss.temperatures(e)[0] for e in range(50)],
                       np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(20) * 0.07)), atol=1e-12)


@pytest.mark.parametrize("key, value, words", [
    ("pred_ratio", 1.5, ["model.masker.pred_ratio", "[0, 1]"]),
    ("pred_ratio", [0.3, -0.1], ["model.masker.pred_ratio", "[0, 1]"]),
    ("pred_ratio_var", 0.4, ["model.masker.pred_ratio_var", "0 <= m - v"]),
    ("pred_ratio_var", [0.0, 0.1, 0.2], ["model.masker.pred_ratio_var", "one value per pred_ratio"]),
    ("pred_aspect_ratio", [0.0, 2.0], ["model.masker.pred_aspect_ratio", "0 < min <= max"]),
    ("pred_start_epoch", -1, ["model.masker.pred_start_epoch", ">= 0"]),
])
def test_bad_values_name_the_key_and_the_allowed_range(key, value, words) -> None:
    with pytest.raises(ConfigError) as exc:
        mimkit.build({"method": TINY, "model": {"masker": {key: value}}})
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_a_visible_only_encoder_is_refused() -> None:
    with pytest.raises(ConfigError, match="visible_only"):
        IBOTBlockMasker(IBOTBlockMasker.Config(), BuildEnv(registry=None, encoder=_Enc(mode="visible_only")))


def test_ibot_model_reads_masks_of_unequal_counts_row_by_row() -> None:
    """The tiny preset (8 x 8 tokens): each image's student latent equals that image encoded alone
    with its own mask, though the rows hide different numbers of tokens."""
    torch.manual_seed(0)
    model = mimkit.build({"method": TINY}).eval()
    b, n = 6, 64
    g = torch.Generator().manual_seed(3)
    noise = model.masker.draw(b, g, torch.device("cpu"))  # (B, 2N): both global crops
    counts = noise[:, :n].sum(1)
    assert len(set(counts.tolist())) >= 3, counts  # unequal, including unmasked crops
    x1, x2 = torch.randn(b, 1, 32, 32, generator=g), torch.randn(b, 1, 32, 32, generator=g)
    with torch.no_grad():
        out = model({"image": x1, "image_target": x2, "mask_noise": noise}, Context())
        assert torch.equal(out.extra["masks"][0].hidden, noise[:, :n]) and torch.equal(out.extra["masks"][1].hidden, noise[:, n:])
        enc = model.encoder
        for i in range(b):
            mi = out.extra["masks"][0].__class__.from_hidden(noise[i : i + 1, :n])
            alone = enc.encode(enc.embed(x1[i : i + 1], mi), mi)
            assert float((out.latent[i] - alone[0]).abs().max()) < 1e-5
    assert torch.isfinite(out.loss) and float(out.losses["patch"]) > 0
