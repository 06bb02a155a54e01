"""Audio-MAE: position-table quirk, window partition and shift masks, time-frequency masking,
forward parity with a reference written from the official formulas (both decoders), the tiny
preset trains and resumes exactly."""
from __future__ import annotations

import shutil
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

import mimkit
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit_audio import SpokenDigits
from mimkit_audiomae import audio_pos_table, convert_official, shifted_window_mask, window_partition, window_reverse
from mimkit_audiomae.convert import import_official
from mimkit_audiomae.visualize import SpectrogramGrid

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh)")


# --------------------------------------------------------------------------------------------
# position table


def official_flexible_table(dim: int, grid_size: tuple[int, int]) -> np.ndarray:
    """util/pos_embed.get_2d_sincos_pos_embed_flexible, written out (with the [CLS] zero row)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw = np.arange(grid_size[0], dtype=np.float32), np.arange(grid_size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size[0], grid_size[1])
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_position_table_official_quirk_and_correct_option():
    dim, gt, gf = 64, 64, 8
    # the official model passes patch_hw = (W/p, H/p) = (F', T') for a (T=1024, F=128) input
    ref = official_flexible_table(dim, (gf, gt))
    ours = audio_pos_table(dim, gt, gf, "official").double().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    correct = audio_pos_table(dim, gt, gf, "correct")
    codes = lambda v: torch.cat([torch.sin(v * (1.0 / 10000 ** (torch.arange(dim // 4) / (dim / 4)))),  # noqa: E731
                                 torch.cos(v * (1.0 / 10000 ** (torch.arange(dim // 4) / (dim / 4))))])
    for k in (0, 9, 100, 511):
        t, f = divmod(k, gf)
        assert torch.allclose(correct[1 + k], torch.cat([codes(torch.tensor(float(f))), codes(torch.tensor(float(t)))]), atol=1e-5)
        # the quirk: token k is coded as column k mod T', row k div T' (not its own (f, t))
        assert torch.allclose(torch.from_numpy(ref[1 + k]).float(),
                              torch.cat([codes(torch.tensor(float(k % gt))), codes(torch.tensor(float(k // gt)))]), atol=1e-5)
    assert (correct - audio_pos_table(dim, gt, gf, "official")).abs().max() > 0.5


# --------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("grid,window,shift", [((64, 8), (4, 4), (2, 0)), ((8, 8), (4, 4), (2, 2)), ((8, 4), (4, 4), (2, 0))])
def test_window_partition_and_shift_mask_match_a_direct_construction(grid, window, shift):
    h, w = grid
    x = torch.arange(h * w, dtype=torch.float32).view(1, h, w, 1)
    wins = window_partition(x, window)  # (num_windows, A, 1)
    nwh, nww = h // window[0], w // window[1]
    for n in range(nwh * nww):
        wi, wj = divmod(n, nww)
        for a in range(window[0] * window[1]):
            i, j = divmod(a, window[1])
            assert wins[n, a, 0] == x[0, wi * window[0] + i, wj * window[1] + j, 0]
    assert torch.equal(window_reverse(wins, window, grid), x)
    mask = shifted_window_mask(grid, window, shift)
    # direct: after rolling by -shift, rolled position p holds original p + shift; tokens whose
    # original index wrapped around the edge (p + s >= side) were not neighbours of the others
    expected = torch.zeros(nwh * nww, window[0] * window[1], window[0] * window[1])
    for n in range(nwh * nww):
        wi, wj = divmod(n, nww)
        pos = [(wi * window[0] + a // window[1], wj * window[1] + a % window[1]) for a in range(window[0] * window[1])]
        wrap = [(i + shift[0] >= h if shift[0] else False, j + shift[1] >= w if shift[1] else False) for i, j in pos]
        for a in range(len(pos)):
            for b in range(len(pos)):
                expected[n, a, b] = 0.0 if wrap[a] == wrap[b] else -100.0
    assert torch.equal(mask, expected)
    assert shifted_window_mask(grid, window, (0, 0)) is None


# --------------------------------------------------------------------------------------------
# time + frequency masking


def official_random_masking_2d(noise_t, noise_f, mask_t_prob, mask_f_prob):
    """models_mae.random_masking_2d with the noise given (its T, F read from the noise)."""
    n, t = noise_t.shape
    f = noise_f.shape[1]
    keep_t, keep_f = int(t * (1 - mask_t_prob)), int(f * (1 - mask_f_prob))
    ids_restore_t = torch.argsort(torch.argsort(noise_t, dim=1), dim=1)
    ids_restore_f = torch.argsort(torch.argsort(noise_f, dim=1), dim=1)
    mask_f = torch.ones(n, f)
    mask_f[:, :keep_f] = 0
    mask_f = torch.gather(mask_f, 1, ids_restore_f).unsqueeze(1).repeat(1, t, 1)
    mask_t = torch.ones(n, t)
    mask_t[:, :keep_t] = 0
    mask_t = torch.gather(mask_t, 1, ids_restore_t).unsqueeze(1).repeat(1, f, 1).permute(0, 2, 1)
    mask = 1 - (1 - mask_t) * (1 - mask_f)
    id2res = torch.arange(n * t * f, dtype=torch.float32).reshape(n, t, f) + 999 * mask
    id2res2 = torch.argsort(id2res.flatten(1))
    return mask.flatten(1), id2res2[:, : keep_t * keep_f], torch.argsort(id2res2)


def test_time_frequency_masking_statistics_and_official_equality():
    model = mimkit.build({"method": "audiomae_tiny_spoken_digits",
                          "model": {"masker": {"name": "time_freq", "t_ratio": 0.25, "f_ratio": 0.5}}})
    masker = model.masker  # grid 8 x 8: keep int(8 * .75) = 6 columns, int(8 * .5) = 4 rows
    g = torch.Generator().manual_seed(0)
    noise = masker.draw(4000, g, torch.device("cpu"))
    mask = masker({}, noise)
    hidden = mask.hidden.view(-1, 8, 8)  # (B, T', F')
    assert mask.num_keep == 24 and bool((hidden.sum((1, 2)) == 64 - 24).all())
    col_hidden = hidden.all(dim=2)  # a time column hidden everywhere
    row_hidden = hidden.all(dim=1)
    assert bool((col_hidden.sum(1) == 2).all()) and bool((row_hidden.sum(1) == 4).all())
    assert torch.equal(hidden, col_hidden[:, :, None] | row_hidden[:, None, :])  # union of columns and rows
    # every column / row is equally likely to be hidden
    assert torch.allclose(col_hidden.float().mean(0), torch.full((8,), 0.25), atol=0.03)
    assert torch.allclose(row_hidden.float().mean(0), torch.full((8,), 0.5), atol=0.03)
    assert abs(mask.hidden.float().mean().item() - (1 - 0.75 * 0.5)) < 1e-6
    ref_mask, ref_keep, ref_restore = official_random_masking_2d(noise[:64, :8], noise[:64, 8:], 0.25, 0.5)
    assert torch.equal(mask.hidden[:64].float(), ref_mask)
    assert torch.equal(mask.ids_keep[:64], ref_keep) and torch.equal(mask.ids_restore[:64], ref_restore)


# --------------------------------------------------------------------------------------------
# forward parity with the official formulas


class RefSwinBlock(torch.nn.Module):
    """The official post-norm window block, written with explicit index bookkeeping."""

    def __init__(self, dim, heads, grid, window, shift):
        super().__init__()
        self.heads, self.grid, self.window, self.shift = heads, grid, window, shift
        self.attn = torch.nn.Module()
        self.attn.qkv, self.attn.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.attn.meta_mlp = torch.nn.Module()
        self.attn.meta_mlp.fc1, self.attn.meta_mlp.fc2 = torch.nn.Linear(2, 384), torch.nn.Linear(384, heads)
        self.attn.tau = torch.nn.Parameter(torch.ones(heads))
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim, eps=1e-6)
        self.mlp = torch.nn.Module()
        self.mlp.fc1, self.mlp.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def attention(self, x):
        b, n, c = x.shape
        (h, w), (wh, ww), (sh, sw) = self.grid, self.window, self.shift
        out = torch.zeros_like(x)
        coords = [(i, j) for i in range(wh) for j in range(ww)]
        rel = torch.tensor([[ci - di, cj - dj] for ci, cj in coords for di, dj in coords], dtype=torch.float32)
        bias = self.attn.meta_mlp.fc2(F.relu(self.attn.meta_mlp.fc1(torch.sign(rel) * torch.log(1 + rel.abs()))))
        bias = bias.t().reshape(self.heads, wh * ww, wh * ww)
        for wi in range(h // wh):
            for wj in range(w // ww):
                # rolled position (r, s) holds the original token ((r + sh) mod h, (s + sw) mod w)
                cells = [(wi * wh + a // ww, wj * ww + a % ww) for a in range(wh * ww)]
                idx = torch.tensor([((r + sh) % h) * w + (s + sw) % w for r, s in cells])
                wrap = torch.tensor([[r + sh >= h if sh else 0, s + sw >= w if sw else 0] for r, s in cells])
                blocked = (wrap[:, None, :] != wrap[None, :, :]).any(-1)
                q, k, v = self.attn.qkv(x[:, idx]).view(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
                cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
                logits = cos / self.attn.tau.clamp(min=0.01).view(1, -1, 1, 1) + bias - 100.0 * blocked
                y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)
                out[:, idx] = self.attn.proj(y)
        return out

    def forward(self, x):
        x = x + self.norm1(self.attention(x))
        return x + self.norm2(self.mlp.fc2(F.gelu(self.mlp.fc1(x))))


class RefAudioMAE(torch.nn.Module):
    """models_mae.MaskedAutoencoderViT (audio_exp, norm_pix_loss), official key names."""

    def __init__(self, t=256, f=128, dim=192, depth=2, heads=3, ddim=64, ddepth=2, dheads=4, mode=1):
        super().__init__()
        self.gt, self.gf, self.mode = t // 16, f // 16, mode
        n = self.gt * self.gf
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(1, dim, 16, 16)
        self.cls_token = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = torch.nn.Parameter(torch.from_numpy(official_flexible_table(dim, (self.gf, self.gt))).float()[None],
                                            requires_grad=False)
        self.blocks = torch.nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
                                          for _ in range(depth))
        self.norm = torch.nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = torch.nn.Linear(dim, ddim)
        self.mask_token = torch.nn.Parameter(torch.randn(1, 1, ddim) * 0.02)
        self.decoder_pos_embed = torch.nn.Parameter(torch.from_numpy(official_flexible_table(ddim, (self.gf, self.gt))).float()[None],
                                                    requires_grad=False)
        if mode == 1:
            self.decoder_blocks = torch.nn.ModuleList(
                RefSwinBlock(ddim, dheads, (self.gt, self.gf), (4, 4), (0, 0) if i % 2 == 0 else (2, 0)) for i in range(ddepth))
        else:
            self.decoder_blocks = torch.nn.ModuleList(
                Block(ddim, dheads, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)) for _ in range(ddepth))
        self.decoder_norm = torch.nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = torch.nn.Linear(ddim, 256)
        with torch.no_grad():  # non-trivial norms and temperatures
            for m in self.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                if isinstance(m, RefSwinBlock):
                    m.attn.tau.uniform_(0.05, 1.0)

    def forward(self, imgs, noise):
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        n, length, d = x.shape
        keep = int(length * (1 - 0.8))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, d))
        mask = torch.ones(n, length)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        mt = self.mask_token.repeat(n, length + 1 - x.shape[1], 1)
        x_ = torch.gather(torch.cat([x[:, 1:], mt], 1), 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        if self.mode == 1:
            x = x[:, 1:]
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        pred = pred if self.mode == 1 else pred[:, 1:]
        p = 16
        target = imgs.reshape(n, 1, self.gt, p, self.gf, p)
        target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, length, p * p)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, pred, mask, ids_restore


@pytest.mark.parametrize("mode", [1, 0])
def test_forward_parity_with_the_official_formulas(tmp_path, mode):
    torch.manual_seed(0)
    ref = RefAudioMAE(mode=mode, dheads=4 if mode == 1 else 16).eval()  # official mode 0: decoder_num_heads 16
    state = {k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "audiomae_official.pth"
    torch.save({"model": state}, path)
    model = mimkit.load(path)  # through the importer: recipe read from the weights
    assert model.encoder.pos_table == "official"
    assert model.decoder.mode == ("local" if mode == 1 else "global")
    converted = convert_official(state)
    assert set(converted) <= set(model.state_dict())
    imgs = torch.randn(3, 1, 256, 128)
    noise = torch.rand(3, 128)
    with torch.no_grad():
        loss, pred, mask, ids_restore = ref(imgs, noise)
        out = model({"audio": imgs}, noise=noise)
    assert torch.equal(out.mask.hidden.float(), mask) and torch.equal(out.mask.ids_restore, ids_restore)
    assert (out.pred - pred).abs().max() < 1e-5
    assert abs(out.loss.item() - loss.item()) < 1e-5
    assert import_official({"model": {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "pos_embed": torch.zeros(1, 5, 8)}}) is None


# --------------------------------------------------------------------------------------------
# the tiny preset


@needs_flite
def test_tiny_preset_trains_resumes_and_draws_spectrograms(tmp_path):
    check_component("audiomae_tiny_spoken_digits", "model.decoder")
    over = tiny_overrides("audiomae_tiny_spoken_digits", limit=64, batch_size=16)
    run = check_preset_trains("audiomae_tiny_spoken_digits", tmp_path, over, steps=4)
    model = mimkit.load(run)
    data = SpokenDigits(SpokenDigits.Config(split="test", target_length=128, limit=2))
    batch = torch.utils.data.default_collate([data[0], data[1]])
    png = SpectrogramGrid()(model, batch, tmp_path / "spec.png")
    assert png.stat().st_size > 10_000
