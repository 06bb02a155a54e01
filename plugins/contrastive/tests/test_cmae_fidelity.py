"""CMAE as the official code does it (ZhichengHuang/CMAE): block-wise masking, views cut from
the whole image, pixel shift ranges, the projector's layers, the momentum encoder without
final norm, weight-decay groups, an explicit mask."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mimkit
from mimkit.api import build_dataset
from mimkit.config import resolve
from mimkit.errors import ConfigError
from mimkit.types import Context
from mimkit_contrastive.masking import BlockMasker


def official_block_mask(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """cmae_vit.py random_masking, written from its formulas: (N, L/4) noise -> (N, L) mask, 1 = removed."""
    n, seq_len = noise.shape
    len_keep = int(seq_len * (1 - ratio))
    ids_keep = torch.argsort(noise, dim=1)[:, :len_keep]
    m = torch.zeros(n, seq_len).scatter(1, ids_keep, 1.0)
    side = int(seq_len**0.5)
    m = m.reshape(n, side, side).unsqueeze(2).unsqueeze(4).expand(-1, -1, 2, -1, 2).flatten(1, 2).flatten(2, 3)
    return 1.0 - m.flatten(1)


def masker(grid: int, ratio: float = 0.65) -> BlockMasker:
    env = SimpleNamespace(encoder=SimpleNamespace(grid=(1, grid, grid)))
    return BlockMasker(BlockMasker.Config(ratio=ratio), env)


def test_block_masking_keeps_17_of_49_blocks_and_equals_the_official_map() -> None:
    m = masker(14)
    assert (m.num_blocks, m.num_keep_blocks, m.num_keep) == (49, 17, 68)
    g = torch.Generator().manual_seed(0)
    noise = torch.stack([m.sample_noise(g) for _ in range(64)])  # (64, 49)
    mask = m({}, noise)
    assert mask.hidden.shape == (64, 196)
    assert (mask.hidden.sum(1) == 196 - 68).all()
    blocks = mask.hidden.view(64, 7, 2, 7, 2).permute(0, 1, 3, 2, 4).reshape(64, 49, 4)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()  # every 2x2 block all kept or all hidden
    assert ((~blocks).all(-1).sum(1) == 17).all()
    torch.testing.assert_close(mask.hidden.float(), official_block_mask(noise, 0.65))
    assert torch.equal(m({}, noise.clone()).hidden, mask.hidden)  # reproducible from the noise
    kept = torch.gather(mask.hidden, 1, mask.ids_keep)
    assert not kept.any() and mask.num_keep == 68
    # blocks are kept uniformly: each of the 49 blocks is visible 17/49 of the time
    big = m({}, torch.rand(4000, 49, generator=g)).hidden.view(4000, 7, 2, 7, 2)[:, :, 0, :, 0]
    freq = (~big).float().mean(0)
    assert abs(float(freq.mean()) - 17 / 49) < 1e-6 and float((freq - 17 / 49).abs().max()) < 0.04


def test_block_masker_on_the_tiny_grid_and_an_explicit_mask() -> None:
    m = masker(8)
    assert (m.num_blocks, m.num_keep_blocks, m.num_keep) == (16, 5, 20)  # int(16 * 0.35) = 5
    hidden = torch.zeros(2, 64, dtype=torch.bool)
    hidden[:, 5:49] = True
    assert torch.equal(m({}, hidden).hidden, hidden)
    with pytest.raises(ValueError, match="divisible"):
        masker(7)


def _marker_folder(tmp_path: Path) -> Path:
    """A 96x64 grey image whose left and right 12 columns are pure red: a centre crop of the
    resized image (48x32 -> 32x32) drops those columns, a crop of the whole image need not."""
    arr = np.full((64, 96, 3), 128, np.uint8)
    arr[:, :12] = (255, 0, 0)
    arr[:, -12:] = (255, 0, 0)
    (tmp_path / "a").mkdir()
    Image.fromarray(arr).save(tmp_path / "a" / "x.png")
    return tmp_path


def _red(view: torch.Tensor) -> torch.Tensor:  # normalized (3, S, S) -> bool (S, S) where red
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = view * std + mean
    return (x[0] > 0.8) & (x[1] < 0.3)


@pytest.mark.parametrize("pairing", ["shift", "independent"])
def test_views_are_cut_from_the_whole_image(tmp_path: Path, pairing: str) -> None:
    root = _marker_folder(tmp_path)
    r = resolve({"method": "cmae_tiny_fashion_mnist",
                 "data": {"base": {"name": "image_folder", "root": str(root), "img_size": 32, "channels": 3},
                          "pairing": pairing, "online_aug": "weak", "target_aug": "weak"}})
    ds = build_dataset(r)
    assert ds.size == 32
    seen = 0
    for seed in range(40):
        torch.manual_seed(seed)
        item = ds[0]
        assert item["image"].shape == (3, 32, 32)
        seen += int(_red(item["image"]).any()) + int(_red(item["image_target"]).any())
    assert seen >= 20  # the marker shows in most views (scale 0.2-1 of the whole 96x64 image)
    # the evaluation view is the centre crop: no marker there
    ev = build_dataset(r, train=False)[0]
    assert not _red(ev["image"]).any()


def test_pixel_shift_online_at_zero_target_uniform_0_to_31() -> None:
    r = resolve({"method": "cmae_vit_base_patch16",
                 "data": {"base": {"name": "fashion_mnist", "img_size": 224, "limit": 4}, "target_aug": "weak"}})
    ds = build_dataset(r)
    assert ds.shift == 31
    torch.manual_seed(0)
    shifts = []
    for _ in range(300):
        item = ds[0]
        shifts.append(item["shift"])
    s = torch.stack(shifts)
    assert int(s.min()) == 0 and int(s.max()) == 31  # U{0..31} per axis, both ends reached
    assert abs(float(s.float().mean()) - 15.5) < 1.5
    # online crop = master[:224, :224], target = master[dy:dy+224, dx:dx+224]: they overlap exactly
    torch.manual_seed(3)
    item = ds[1]
    dy, dx = item["shift"].tolist()
    a, b = item["image"][0], item["image_target"][0]
    torch.testing.assert_close(a[dy:, dx:], b[: 224 - dy, : 224 - dx])


@pytest.fixture(scope="module")
def tiny_cmae():
    return mimkit.build({"method": "cmae_tiny_fashion_mnist",
                         "model": {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3},
                                   "decoder": {"embed_dim": 32, "depth": 1},
                                   "feature_decoder": {"embed_dim": 32, "depth": 1}}})


def test_cmae_heads_teacher_and_weight_decay_follow_the_official_config(tiny_cmae) -> None:
    m = tiny_cmae
    for mlp in (m.projector, m.predictor):
        linears = [x for x in mlp.net if isinstance(x, nn.Linear)]
        assert linears[0].bias is not None and linears[-1].bias is None  # with_bias, no last bias
        bns = [x for x in mlp.net if isinstance(x, nn.BatchNorm1d) or isinstance(x, nn.SyncBatchNorm)]
        assert bns and all(b.eps == 1e-6 for b in bns)
    # the momentum encoder has no final norm: its latent is the last block's output
    x = torch.randn(3, 1, 32, 32)
    teacher = m.teacher(({"image_target": x}), Context())["teacher_latent"]
    enc = m.teacher.copies["encoder"]
    with torch.no_grad():
        t = enc.vit.patch_embed(x)
        t = enc.vit._pos_embed(t) if hasattr(enc.vit, "_pos_embed") else t
        t = enc.vit.blocks(enc.vit.norm_pre(t))
    torch.testing.assert_close(teacher, t)
    assert not torch.allclose(teacher, enc.vit.norm(t))
    groups = m.param_groups(0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    exempt = {names[id(p)] for p in groups[1]["params"]}
    assert "projector.net.1.weight" in decayed  # BatchNorm weights decay in the official config
    assert "decoder.norm.weight" in exempt and "encoder.vit.norm.weight" in exempt  # every LayerNorm (mmcv "ln*")
    assert "encoder.vit.pos_embed" not in decayed and "encoder.vit.cls_token" in exempt
    assert "decoder.mask_token" in exempt and "projector.net.0.bias" in exempt
    assert "encoder.vit.blocks.0.attn.qkv.weight" in decayed
    # the trainer's optimizer takes these groups (not the generic rule, which exempts BN weights)
    from mimkit.optim import make_optimizer

    opt = make_optimizer(m, resolve({"method": "cmae_tiny_fashion_mnist"}).optim, lr=1e-3)
    assert [{names[id(p)] for p in g["params"]} for g in opt.param_groups] == [decayed, exempt]
    assert [g["apply_wd"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[0]["weight_decay"] == resolve({"method": "cmae_tiny_fashion_mnist"}).optim.weight_decay


def test_cmae_explicit_mask_equals_the_noise_mask(tiny_cmae) -> None:
    m = tiny_cmae.eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(2, 1, 32, 32, generator=g), "image_target": torch.randn(2, 1, 32, 32, generator=g)}
    noise = torch.rand(2, 16, generator=g)
    a = m(batch, noise=noise)
    b = m(batch, mask=a.mask.hidden)
    assert int(a.mask.hidden.sum()) == 2 * 44
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.pred, b.pred)
    uneven = a.mask.hidden.clone()
    uneven[1, int(uneven[1].nonzero()[0])] = False
    with pytest.raises(ConfigError, match=r"same number of hidden tokens.*\[44, 43\]"):
        m(batch, mask=uneven)
    with pytest.raises(ConfigError, match=r"boolean \(B, N\) = \(2, 64\)"):
        m(batch, mask=a.mask.hidden[:, :10])
    with pytest.raises(ConfigError, match="either noise or mask"):
        m(batch, mask=a.mask.hidden, noise=noise)
