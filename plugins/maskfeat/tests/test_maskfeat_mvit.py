"""The ``mvit_video`` encoder (MViTv2) and the import of SlowFast's Kinetics MaskFeat files.

The reference is written here in plain torch from SlowFast's formulas, on the official key names:
``PatchEmbed`` (Conv3d), ``MaskMViT._maskfeat_forward`` (the loader's mask window interpolated
to the stem grid, ``x * (1 - m) + mask_token * m``, [CLS], no absolute positions, blocks up to
``PRETRAIN_DEPTH``), ``MultiScaleBlock`` / ``MultiScaleAttention`` (``attention_pool`` with a
depthwise Conv3d + LayerNorm per head, ``cal_rel_pos_spatial`` / ``cal_rel_pos_temporal`` with
``get_rel_pos`` resizing, residual pooling, the max-pooled skip, ``proj`` after norm2),
``MSSeparateHead`` (LayerNorm, [CLS] dropped, hidden tokens, linear), ``HOGLayerC`` +
``_get_hog_label_3d`` and ``MultipleMSELoss``. Random weights of a TINY MViTv2 (5-block
schedule cut after block 3, 3 stages, 4x32x32 RGB clips) are saved in the official
``{"epoch", "model_state", "optimizer_state", "cfg"}`` layout; nothing is downloaded.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

import mimkit
from mimkit.plugin_api import ConfigError
from mimkit.testing import check_component, check_preset_trains, tiny_overrides
from mimkit_maskfeat import round_width
from slowfast_hog import ref_hog

C, T, S = 3, 4, 32  # RGB clips of 4 frames of 32x32
STEM = (2, 8, 8)  # Conv3d 3x7x7, stride 2x4x4, padding 1x3x3
MVIT = {"EMBED_DIM": 16, "NUM_HEADS": 1, "DEPTH": 5, "MLP_RATIO": 4.0, "QKV_BIAS": True, "PATCH_2D": False,
        "PATCH_KERNEL": [3, 7, 7], "PATCH_STRIDE": [2, 4, 4], "PATCH_PADDING": [1, 3, 3],
        "DIM_MUL": [[1, 2.0], [3, 2.0], [4, 2.0]], "HEAD_MUL": [[1, 2.0], [3, 2.0], [4, 2.0]],
        "POOL_Q_STRIDE": [[0, 1, 1, 1], [1, 1, 2, 2], [2, 1, 1, 1], [3, 1, 1, 1], [4, 1, 1, 1]],
        "POOL_KVQ_KERNEL": [3, 3, 3], "POOL_KV_STRIDE_ADAPTIVE": [1, 4, 4], "ZERO_DECAY_POS_CLS": False,
        "CLS_EMBED_ON": True, "USE_ABS_POS": False, "SEP_POS_EMBED": True, "REL_POS_SPATIAL": True,
        "REL_POS_TEMPORAL": True, "RESIDUAL_POOLING": True, "MODE": "conv", "DROPPATH_RATE": 0.0}
# The schedule of that cfg worked out by hand from MViT.__init__ (MaskMViT keeps blocks 0..3, PRETRAIN_DEPTH 3):
# (dim, dim_out, heads, q stride, kv stride, grid before the block, rel-pos spatial length)
BLOCKS = [(16, 32, 1, (1, 1, 1), (1, 4, 4), (2, 8, 8), 15),   # q 8x8, kv 2x2 -> 2*8-1
          (32, 32, 2, (1, 2, 2), (1, 2, 2), (2, 8, 8), 7),    # q 4x4, kv 4x4
          (32, 64, 2, (1, 1, 1), (1, 2, 2), (2, 4, 4), 7),    # q 4x4, kv 2x2
          (64, 128, 4, (1, 1, 1), (1, 2, 2), (2, 4, 4), 7)]   # dim_out takes DIM_MUL of block 4 (deleted)
GRID = (2, 4, 4)  # prediction grid, 8x8 pixels per token
OUT = C * 9 * 1  # HOGLayerC's 8-px cells: one cell per token, 27 values
WINDOW = [2, 2, 2]  # AUG.MASK_WINDOW_SIZE


def cfg_yaml(**mvit) -> str:
    return yaml.safe_dump({
        "MVIT": MVIT | mvit, "MASK": {"ENABLE": True, "PRETRAIN_DEPTH": [3], "HEAD_TYPE": "separate", "PRED_HOG": True},
        "AUG": {"MASK_RATIO": 0.4, "MASK_TUBE": False, "MASK_FRAMES": False, "MASK_WINDOW_SIZE": WINDOW},
        "DATA": {"NUM_FRAMES": T, "TRAIN_CROP_SIZE": S, "INPUT_CHANNEL_NUM": [C]},
        "MODEL": {"MODEL_NAME": "MaskMViT", "ARCH": "maskmvit"}})


def official_state(seed: int = 0, cls: bool = True, abs_pos: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    d0 = MVIT["EMBED_DIM"]
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    sd = {"cls_token": r(1, 1, d0)} if cls else {}
    if abs_pos:  # SEP_POS_EMBED tables
        sd |= {"pos_embed_spatial": r(1, STEM[1] * STEM[2], d0), "pos_embed_temporal": r(1, STEM[0], d0)}
        sd |= {"pos_embed_class": r(1, 1, d0)} if cls else {}
    sd |= {"mask_token": r(1, 1, d0), "patch_embed.proj.weight": r(d0, C, 3, 7, 7),
          "patch_embed.proj.bias": r(d0), "hogs.0.weight_x": sobel, "hogs.0.weight_y": sobel.transpose(2, 3),
          "pred_head.transforms.0.0.weight": 1 + r(128), "pred_head.transforms.0.0.bias": r(128),
          "pred_head.projections.0.weight": r(OUT, 128), "pred_head.projections.0.bias": r(OUT)}
    for i, (d, do, h, _sq, _skv, (t, _, _), rel) in enumerate(BLOCKS):
        p, hd = f"blocks.{i}.", d // h
        sd |= {p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d), p + "attn.qkv.weight": r(3 * d, d),
               p + "attn.qkv.bias": r(3 * d), p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
               p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d), p + "mlp.fc1.weight": r(4 * d, d),
               p + "mlp.fc1.bias": r(4 * d), p + "mlp.fc2.weight": r(do, 4 * d), p + "mlp.fc2.bias": r(do),
               p + "attn.rel_pos_h": 3 * r(rel, hd), p + "attn.rel_pos_w": 3 * r(rel, hd),
               p + "attn.rel_pos_t": 3 * r(2 * t - 1, hd)}
        for x in "qkv":
            sd |= {p + f"attn.pool_{x}.weight": 3 * r(hd, 1, 3, 3, 3), p + f"attn.norm_{x}.weight": 1 + r(hd),
                   p + f"attn.norm_{x}.bias": r(hd)}
        if d != do:
            sd |= {p + "proj.weight": r(do, d), p + "proj.bias": r(do)}
    return sd


# -- the reference, from SlowFast's formulas --------------------------------------------------------------

def ref_pool(t, thw, sd, pre, stride, sp):
    """attention_pool with conv pooling: [CLS] out, depthwise Conv3d per head, [CLS] back, LayerNorm."""
    cls, t = t[:, :, :sp], t[:, :, sp:]
    b, nh, _, hd = t.shape
    g = t.reshape(b * nh, *thw, hd).permute(0, 4, 1, 2, 3)
    g = F.conv3d(g, sd[pre.replace("X", "pool") + ".weight"], stride=stride, padding=1, groups=hd)
    thw = list(g.shape[2:])
    t = torch.cat((cls, g.reshape(b, nh, hd, -1).transpose(2, 3)), dim=2)
    norm = pre.replace("X", "norm")
    return F.layer_norm(t, (hd,), sd[norm + ".weight"], sd[norm + ".bias"], eps=1e-6), thw


def ref_get_rel_pos(rel, d):
    if rel.shape[0] == d:
        return rel
    return F.interpolate(rel.reshape(1, rel.shape[0], -1).permute(0, 2, 1), size=d, mode="linear").reshape(-1, d).permute(1, 0)


def ref_dist(q, k):
    qr, kr = max(k / q, 1.0), max(q / k, 1.0)
    return (torch.arange(q)[:, None] * qr - torch.arange(k)[None, :] * kr + (k - 1) * kr).long()


def ref_rel_pos(attn, q, q_shape, k_shape, rh, rw, rt, sp):
    """cal_rel_pos_spatial then cal_rel_pos_temporal (in place on the patch-token block of attn)."""
    (qt, qh, qw), (kt, kh, kw) = q_shape, k_shape
    b, nh, _, dim = q.shape
    Rh = ref_get_rel_pos(rh, 2 * max(qh, kh) - 1)[ref_dist(qh, kh)]
    Rw = ref_get_rel_pos(rw, 2 * max(qw, kw) - 1)[ref_dist(qw, kw)]
    r_q = q[:, :, sp:].reshape(b, nh, qt, qh, qw, dim)
    rel_h = torch.einsum("bythwc,hkc->bythwk", r_q, Rh)
    rel_w = torch.einsum("bythwc,wkc->bythwk", r_q, Rw)
    attn[:, :, sp:, sp:] = (attn[:, :, sp:, sp:].view(b, -1, qt, qh, qw, kt, kh, kw)
                          + rel_h[:, :, :, :, :, None, :, None] + rel_w[:, :, :, :, :, None, None, :]
                          ).view(b, -1, qt * qh * qw, kt * kh * kw)
    Rt = ref_get_rel_pos(rt, 2 * max(qt, kt) - 1)[ref_dist(qt, kt)]
    r_q = r_q.permute(2, 0, 1, 3, 4, 5).reshape(qt, b * nh * qh * qw, dim)
    rel = torch.matmul(r_q, Rt.transpose(1, 2)).transpose(0, 1).view(b, nh, qh, qw, qt, kt).permute(0, 1, 4, 2, 3, 5)
    attn[:, :, sp:, sp:] = (attn[:, :, sp:, sp:].view(b, -1, qt, qh, qw, kt, kh, kw)
                          + rel[:, :, :, :, :, :, None, None]).view(b, -1, qt * qh * qw, kt * kh * kw)
    return attn


def ref_block(x, thw, sd, i, sp):
    d, do, nh, sq, skv, _, _ = BLOCKS[i]
    p = f"blocks.{i}."
    b, n, _ = x.shape
    xn = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(xn, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(b, n, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, q_shape = ref_pool(q, thw, sd, p + "attn.X_q", sq, sp)
    k, k_shape = ref_pool(k, thw, sd, p + "attn.X_k", skv, sp)
    v, _ = ref_pool(v, thw, sd, p + "attn.X_v", skv, sp)
    attn = (q * (d // nh) ** -0.5) @ k.transpose(-2, -1)
    attn = ref_rel_pos(attn, q, q_shape, k_shape, sd[p + "attn.rel_pos_h"], sd[p + "attn.rel_pos_w"],
                       sd[p + "attn.rel_pos_t"], sp)
    o = attn.softmax(dim=-1) @ v
    o[:, :, sp:, :] += q[:, :, sp:, :]  # residual pooling
    o = F.linear(o.transpose(1, 2).reshape(b, -1, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    if math.prod(sq) > 1:  # pool_skip: MaxPool3d, kernel s + 1 where s > 1, padding kernel // 2
        kern = [s + 1 if s > 1 else s for s in sq]
        g = x[:, sp:].reshape(b, *thw, d).permute(0, 4, 1, 2, 3)
        g = F.max_pool3d(g, kern, sq, [k_ // 2 for k_ in kern])
        x = torch.cat((x[:, :sp], g.reshape(b, d, -1).transpose(1, 2)), dim=1)
    x = x + o
    xn = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    mlp = F.linear(F.gelu(F.linear(xn, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                   sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    if d != do:
        x = F.linear(xn, sd[p + "proj.weight"], sd[p + "proj.bias"])
    return x + mlp, q_shape




def ref_maskfeat(sd, x, window_mask):
    """_maskfeat_forward + _get_hog_label_3d + MultipleMSELoss. window_mask: (B, 2, 2, 2) float from the loader.
    Returns (block-3 output (B, 1 + N, 128), pred (n_hidden, OUT), labels, loss, hidden (B, N))."""
    b = x.shape[0]
    hidden = F.interpolate(window_mask, size=GRID[-1]).flatten(1).bool()  # _get_multiscale_mask
    frames = x[:, :, ::2].transpose(1, 2)
    hog = ref_hog(frames.flatten(0, 1)).flatten(1, 2)  # (B*T', 27, 4, 4)
    u = hog.shape[-1] // GRID[-1]
    hog = hog.permute(0, 2, 3, 1).unfold(1, u, u).unfold(2, u, u).flatten(3).view(b, GRID[0], GRID[1], GRID[2], -1)
    label = hog.flatten(1, 3)[hidden]
    t = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 4, 4), padding=(1, 3, 3))
    t = t.flatten(2).transpose(1, 2)
    m = F.interpolate(window_mask, size=STEM[1:]).flatten(1).unsqueeze(-1)
    t = t * (1 - m) + sd["mask_token"].expand(b, t.shape[1], -1) * m
    sp = int("cls_token" in sd)
    if sp:
        t = torch.cat((sd["cls_token"].expand(b, -1, -1), t), dim=1)
    if "pos_embed_spatial" in sd:  # SEP_POS_EMBED: spatial table repeated over time + temporal table per step
        pos = sd["pos_embed_spatial"].repeat(1, STEM[0], 1) + torch.repeat_interleave(
            sd["pos_embed_temporal"], STEM[1] * STEM[2], dim=1)
        t = t + (torch.cat([sd["pos_embed_class"], pos], 1) if sp else pos)
    thw = list(STEM)
    for i in range(len(BLOCKS)):
        t, thw = ref_block(t, thw, sd, i, sp)
    y = F.layer_norm(t, (128,), sd["pred_head.transforms.0.0.weight"], sd["pred_head.transforms.0.0.bias"], eps=1e-6)
    pred = F.linear(y[:, sp:][hidden], sd["pred_head.projections.0.weight"], sd["pred_head.projections.0.bias"])
    return t, pred, label, F.mse_loss(pred, label), hidden


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mvit") / "k400_MVIT_S_MaskFeat_PT_epoch_00300.pyth"
    sd = official_state()
    torch.save({"epoch": 300, "model_state": sd, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": cfg_yaml()}, path)
    return path, sd


def _window_mask() -> torch.Tensor:
    w = torch.zeros(2, *WINDOW)
    w[0, 0, 0, 1] = w[0, 1, :, 0] = 1  # 3 units (12 tokens)
    w[1, 1, 1, 1] = 1  # 1 unit: the counts differ, as MaskingGenerator3D's may
    return w


@pytest.mark.parametrize("cls, abs_pos", [(False, False), (True, True), (False, True)])
def test_other_mvit_options_match_the_reference(tmp_path, cls, abs_pos) -> None:
    """CLS_EMBED_ON False (no [CLS]: pooling, rel-pos, residual pooling and the head on every token)
    and USE_ABS_POS with SEP_POS_EMBED tables (space repeated over time + time per step [+ class])."""
    sd = official_state(4, cls=cls, abs_pos=abs_pos)
    torch.save({"epoch": 1, "model_state": sd, "cfg": cfg_yaml(CLS_EMBED_ON=cls, USE_ABS_POS=abs_pos)}, tmp_path / "o.pyth")
    model = mimkit.load(tmp_path / "o.pyth")
    assert model.encoder.num_prefix_tokens == int(cls)
    x = torch.randn(2, C, T, S, S, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        block_out, pred, _, loss, hidden = ref_maskfeat(sd, x, _window_mask())
        out = model({"video": x}, mask=hidden)
        _, layers = model.encoder.encode(model.encoder.embed(x, out.mask), out.mask, return_layers=True)
    assert (layers[-1] - block_out).abs().max() <= 1e-5
    assert (out.pred[hidden] - pred).abs().max() <= 1e-6 and abs(float(out.loss) - float(loss)) <= 1e-6


def test_round_width_matches_slowfast() -> None:
    assert [round_width(96, 2.0, divisor=2), round_width(1, 2.0), round_width(64, 2.0, divisor=8)] == [192, 2, 128]
    assert round_width(100, 0.5, divisor=32) == 64  # 50 -> 64 (multiple of 32, at least 0.9 * 50)


def test_slowfast_mvitv2_file_imports_with_parity(official_file) -> None:
    path, sd = official_file
    model = mimkit.load(path)
    enc = model.encoder
    assert [(b.dim, b.dim_out, b.attn.num_heads) for b in enc.blocks] == [blk[:3] for blk in BLOCKS]
    assert (enc.grid, enc.patch, enc.stem_grid, enc.embed_dim) == (GRID, (2, 8, 8), STEM, 128)
    assert model.masker.window == tuple(WINDOW) and model.target.dim == OUT
    x = torch.randn(2, C, T, S, S, generator=torch.Generator().manual_seed(1))
    window = _window_mask()
    with torch.no_grad():
        block_out, pred, label, loss, hidden = ref_maskfeat(sd, x, window)
        out = model({"video": x}, mask=hidden)
        mask = out.mask
        _, layers = enc.encode(enc.embed(x, mask), mask, return_layers=True)
    assert hidden.sum(1).tolist() == [12, 4]
    assert (layers[-1] - block_out).abs().max() <= 1e-5  # the prediction block's output, [CLS] included
    assert (out.pred[hidden] - pred).abs().max() <= 1e-6
    assert (out.target[hidden] - label).abs().max() <= 1e-6
    assert abs(float(out.loss) - float(loss)) <= 1e-6
    # the reference is sensitive to what is tested: without the temporal (or spatial) tables the output moves
    for table in ("rel_pos_t", "rel_pos_h"):
        cut = {k: (torch.zeros_like(v) if k.endswith(table) else v) for k, v in sd.items()}
        assert (ref_maskfeat(cut, x, window)[0] - block_out).abs().max() > 1e-3


def test_convert_official_into_the_paper_preset_geometry(official_file) -> None:
    """The state loads strictly into a mvit_video built from the paper preset with the file's sizes."""
    _, sd = official_file
    enc = {k.lower(): v for k, v in MVIT.items() if k in ("EMBED_DIM", "NUM_HEADS", "DEPTH")}
    enc |= {"pred_depth": 3, "dim_mul": MVIT["DIM_MUL"], "head_mul": MVIT["HEAD_MUL"],
            "pool_q_stride": MVIT["POOL_Q_STRIDE"], "pool_kv_stride_adaptive": [1, 4, 4]}
    model = mimkit.build({"method": "maskfeat_mvitv2_s_k400", "data": {"img_size": S, "num_frames": T},
                          "model": {"encoder": enc, "masker": {"window": WINDOW}}})
    from mimkit_maskfeat import convert_official
    missing, unexpected = model.load_state_dict(convert_official({"model_state": sd}), strict=True)
    assert not missing and not unexpected


def test_mvit_files_with_what_mimkit_lacks_are_refused(tmp_path) -> None:
    sd = official_state(2)
    torch.save(sd, tmp_path / "bare.pth")  # a bare model_state: the schedule is not in the weights
    with pytest.raises(ConfigError, match="without the file's cfg"):
        mimkit.load(tmp_path / "bare.pth")
    torch.save({"epoch": 1, "model_state": sd, "cfg": cfg_yaml(POOL_FIRST=True)}, tmp_path / "pf.pyth")
    with pytest.raises(ConfigError, match="POOL_FIRST True"):
        mimkit.load(tmp_path / "pf.pyth")
    sd2 = dict(sd) | {"pred_head.projections.1.weight": torch.zeros(4, 16)}
    torch.save({"epoch": 1, "model_state": sd2, "cfg": cfg_yaml()}, tmp_path / "two.pyth")
    with pytest.raises(ConfigError, match=r"MViTv2 \(4 blocks.*2 prediction heads"):
        mimkit.load(tmp_path / "two.pyth")


def test_paper_preset_is_mvitv2_s() -> None:
    """maskfeat_mvitv2_s_k400 builds the K400 MaskFeat MViTv2-S (meta device: no memory)."""
    with torch.device("meta"):
        model = mimkit.build({"method": "maskfeat_mvitv2_s_k400"})
    enc = model.encoder
    assert (enc.stem_grid, enc.grid, enc.patch, enc.embed_dim, len(enc.blocks)) == ((8, 56, 56), (8, 14, 14), (2, 16, 16), 768, 16)
    assert [b.dim_out for b in enc.blocks] == [192] * 2 + [384] * 11 + [768] * 3
    assert [b.attn.num_heads for b in enc.blocks] == [1, 2, 2] + [4] * 11 + [8] * 2
    assert [b.attn.pool_k.stride for b in enc.blocks[:4]] == [(1, 8, 8), (1, 4, 4), (1, 4, 4), (1, 2, 2)]
    assert [b.attn.rel_pos_h.shape[0] for b in enc.blocks[:4]] == [111, 55, 55, 27]
    assert model.target.dim == 108 and model.masker.window == (8, 7, 7) and model.masker.num_mask == 157
    # SlowFast's MaskFeat README: MViT-S 36M, MViT-L 218M parameters (with a 400-way classifier, which the
    # pretraining model has not: + 768 * 400 + 400 and + 1152 * 400 + 400)
    assert round((sum(p.numel() for p in enc.parameters()) + 768 * 401) / 1e6) == 36


def test_mvitv2_l_cfg_gives_the_l_schedule() -> None:
    """The importer's recipe for a k400_MVITv2_L_16x4_MaskFeat_PT cfg (stem written "(3, 7, 7)"), on meta."""
    q = [[i, 1, 2, 2] if i in (2, 8) else [i, 1, 1, 1] for i in range(48)]
    mul = [[2, 2.0], [8, 2.0], [44, 2.0]]
    cfg = {"MVIT": {"EMBED_DIM": 144, "NUM_HEADS": 2, "DEPTH": 48, "PATCH_KERNEL": "(3, 7, 7)", "PATCH_STRIDE": "(2, 4, 4)",
                    "PATCH_PADDING": "(1, 3, 3)", "DIM_MUL": mul, "HEAD_MUL": mul, "POOL_Q_STRIDE": q,
                    "POOL_KV_STRIDE_ADAPTIVE": [1, 8, 8], "POOL_KVQ_KERNEL": [3, 3, 3], "USE_ABS_POS": False,
                    "SEP_POS_EMBED": True, "REL_POS_SPATIAL": True, "REL_POS_TEMPORAL": True, "RESIDUAL_POOLING": True},
           "MASK": {"PRETRAIN_DEPTH": [47], "PRED_HOG": True}, "AUG": {"MASK_RATIO": 0.4},
           "DATA": {"NUM_FRAMES": 16, "TRAIN_CROP_SIZE": 224}}
    from mimkit_maskfeat import recipe_for_mvit
    recipe = recipe_for_mvit({"patch_embed.proj.weight": torch.empty(144, 3, 3, 7, 7, device="meta")}, cfg)
    with torch.device("meta"):
        model = mimkit.build(recipe)
    enc = model.encoder
    assert (enc.grid, enc.embed_dim, len(enc.blocks), enc.blocks[-1].attn.num_heads) == ((8, 14, 14), 1152, 48, 16)
    assert round((sum(p.numel() for p in enc.parameters()) + 1152 * 401) / 1e6) == 218


def test_tiny_mvit_preset_component_and_training(tmp_path) -> None:
    check_component("maskfeat_mvit_tiny_moving_fmnist", "model.encoder")
    check_preset_trains("maskfeat_mvit_tiny_moving_fmnist", tmp_path, steps=6, overrides=tiny_overrides(
        "maskfeat_mvit_tiny_moving_fmnist", limit=64, batch_size=8))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = mimkit.build({"method": "maskfeat_mvit_tiny_moving_fmnist",
                              "model": {"encoder": {"grad_checkpointing": ckpt}}}).train()
        x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(3))
        hidden = torch.zeros(2, 64, dtype=torch.bool)
        hidden[:, ::3] = True
        model({"video": x}, mask=hidden).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-7, rtol=0)
