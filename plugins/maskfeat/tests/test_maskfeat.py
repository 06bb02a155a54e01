"""MaskFeat plugin tests: HOG against a loop reference, block masks, the head, a short training."""
from __future__ import annotations

import math

import pytest
import torch

import mimkit
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit.types import Mask
from mimkit_maskfeat.hog import gaussian_window, hog_cells, hog_per_patch
from mimkit_maskfeat.masking import block_mask

TINY = "maskfeat_tiny_fashion_mnist"


# ------------------------------------------------------------------------------------------------
# HOG


def reference_hog(img: torch.Tensor, nbins: int = 9, cell: int = 8, window: int = 0) -> torch.Tensor:
    """Plain-loop HOG of one (C, H, W) image, from the formula: (C, nbins, H/cell, W/cell)."""
    c, h, w = img.shape
    a = img.double().tolist()
    gk = gaussian_window(window).double().tolist() if window else None

    def px(ch: int, i: int, j: int) -> float:  # reflect padding by one pixel
        i = -i if i < 0 else (2 * (h - 1) - i if i >= h else i)
        j = -j if j < 0 else (2 * (w - 1) - j if j >= w else j)
        return a[ch][i][j]

    out = [[[[0.0] * (w // cell) for _ in range(h // cell)] for _ in range(nbins)] for _ in range(c)]
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                # cross-correlation with [[1, 0, -1], [2, 0, -2], [1, 0, -1]]: left minus right
                gx = sum(k * (px(ch, i + di, j - 1) - px(ch, i + di, j + 1)) for di, k in ((-1, 1), (0, 2), (1, 1)))
                gy = sum(k * (px(ch, i - 1, j + dj) - px(ch, i + 1, j + dj)) for dj, k in ((-1, 1), (0, 2), (1, 1)))
                mag = math.sqrt(gx * gx + gy * gy)
                if gk is not None:
                    mag *= gk[i % window][j % window]
                b = math.floor(math.atan2(gx, gy) / math.pi * nbins) % nbins
                out[ch][b][i // cell][j // cell] += mag
    t = torch.tensor(out, dtype=torch.float64)  # (C, nbins, h, w)
    norm = t.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return (t / norm).float()


def _int_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Integer-valued images: gradients are exact, so bin choices cannot differ by rounding."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6, (b, c, h, w), generator=g).float()


@pytest.mark.parametrize("c,size,cell", [(3, 16, 8), (1, 16, 4), (2, 12, 4)])
def test_hog_matches_loop_reference(c: int, size: int, cell: int) -> None:
    x = _int_images(2, c, size, size)
    got = hog_cells(x, nbins=9, cell=cell)
    want = torch.stack([reference_hog(im, 9, cell) for im in x])
    assert got.shape == (2, c, 9, size // cell, size // cell)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gaussian_variant_matches_reference_and_differs() -> None:
    x = _int_images(1, 3, 16, 16, seed=1)
    plain = hog_cells(x, cell=8)
    gauss = hog_cells(x, cell=8, window=8)
    torch.testing.assert_close(gauss[0], reference_hog(x[0], 9, 8, window=8), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, gauss, atol=1e-3)


def test_vertical_step_edge_lands_in_bin_4() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = 1.0  # dark left half, bright right half
    h = hog_cells(x, cell=8)  # (1, 1, 9, 2, 2)
    energy = h.sum(dim=(0, 1, 3, 4))  # per bin
    assert int(energy.argmax()) == 4
    assert energy[4] > 0 and torch.count_nonzero(energy) == 1


def test_target_layout_dim_and_normalization_invariance() -> None:
    model = mimkit.build({"method": "maskfeat_vit_base_patch16"})
    assert model.target.dim == 108
    x = _int_images(1, 3, 224, 224, seed=2)
    tgt = model.target({"image": x})  # (1, 196, 108)
    assert tgt.shape == (1, 196, 108)
    cells = hog_cells(x, cell=8)[0, :, :, 2:4, 4:6]  # (3, 9, 2, 2): patch (row 1, col 2)
    order = [cells[ch, b, r, cc] for ch in range(3) for b in range(9) for r in range(2) for cc in range(2)]
    torch.testing.assert_close(tgt[0, 1 * 14 + 2], torch.stack(order))
    # mean/std normalization per channel does not change the HOG (Sobel sums to 0, atan2 is
    # scale-invariant, per-cell L2). Non-integer pixels: an exactly-zero gx (bin 0 vs 8 by
    # rounding, see the MaskFeat paper, Wei et al. 2022) does not occur.
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.target({"image": (x - mean) / std}), model.target({"image": x}), atol=1e-4, rtol=1e-4)


def test_hog_per_patch_order() -> None:
    hog = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(1, 2, 3, 4, 4)  # (B, C, bins, h, w)
    out = hog_per_patch(hog, 2, 2)  # 2x2 patches of 2x2 cells
    assert out.shape == (1, 4, 2 * 3 * 4)
    # patch 1 = (row 0, col 1): channel 1, bin 2, cell (1, 0) -> index 1*12 + 2*4 + 1*2 + 0
    assert out[0, 1, 1 * 12 + 2 * 4 + 2] == hog[0, 1, 2, 1, 2]


# ------------------------------------------------------------------------------------------------
# Block masking


def _components(mask: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected components of a (H, W) bool map."""
    h, w = mask.shape
    seen = torch.zeros_like(mask)
    sizes = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                stack, n = [(i, j)], 0
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    n += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        y, x = a + da, b + db
                        if 0 <= y < h and 0 <= x < w and mask[y, x] and not seen[y, x]:
                            seen[y, x] = True
                            stack.append((y, x))
                sizes.append(n)
    return sizes


def test_block_masks_exact_count_and_blocks() -> None:
    model = mimkit.build({"method": "maskfeat_vit_base_patch16", "model": {"masker": {"exact": True}}})
    masker = model.masker
    g = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(30):
        m = masker.sample_noise(g)
        assert m.shape == (196,) and int(m.sum()) == int(0.4 * 196)
        sizes += _components(m.view(14, 14))
    assert sum(sizes) / len(sizes) > 8  # blocks, not scattered single patches
    noise = masker.draw(4, torch.Generator().manual_seed(1), torch.device("cpu"))
    mask = masker({"image": None}, noise)
    assert isinstance(mask, Mask) and mask.num_keep == 196 - 78 and bool((mask.hidden.sum(1) == 78).all())
    again = masker.draw(4, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(noise, again)  # reproducible from the generator


@pytest.mark.parametrize("num_hidden", [0, 1, 6, 15])
def test_block_mask_small_grid_exact(num_hidden: int) -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        m = block_mask(4, 4, num_hidden, g, min_num_patches=2, exact=True)
        assert int(m.sum()) == num_hidden


# ------------------------------------------------------------------------------------------------
# Head and training


def test_linear_head_masked_and_visible_only_error() -> None:
    model = mimkit.build({"method": TINY, "model": {"decoder": {"predict": "masked"}}})
    out = model({"image": torch.randn(3, 1, 32, 32)}, noise=model.masker.draw(3, torch.Generator().manual_seed(0), "cpu"))
    assert out.pred.shape == (3, 6, 36) and out.target.shape == (3, 6, 36) and out.pred_scope == "masked"
    bad = mimkit.build({"method": TINY,
                        "model": {"encoder": {"mode": "visible_only"}, "masker": {"exact": True}}})
    with pytest.raises(ValueError, match="with_mask_token"):
        bad({"image": torch.randn(2, 1, 32, 32)})


def test_linear_head_contract() -> None:
    check_component(TINY, "model.decoder")


def test_tiny_preset_lowers_the_loss_by_a_fifth_and_resumes_exactly(tmp_path) -> None:
    """One batch of 32 images, 6 steps (other crops and masks every step): the HOG regression
    falls by more than a fifth (0.18 -> 0.08 measured); resuming from step 3 is exact."""
    check_preset_trains(TINY, tmp_path, tiny_overrides(TINY, limit=32, batch_size=32), steps=6, min_drop=0.2)
