"""SlowFast MaskFeat checkpoints (``{"epoch", "model_state", "optimizer_state", "cfg"}``).

The reference is written here from SlowFast's formulas: ``MaskMViT._maskfeat_forward`` for a 2-D
patch (``x * (1 - m) + mask_token * m``, [CLS], + ``pos_embed``, the blocks, the head's LayerNorm,
[CLS] dropped, hidden tokens, linear), ``MultiScaleBlock``/``MultiScaleAttention`` without pooling
(pre-norm, fused qkv, LayerNorm eps 1e-6), ``HOGLayerC`` + ``_get_hog_label_2d`` (the target) and
``MultipleMSELoss`` (one MSE). Random weights are saved in the official layout; nothing is
downloaded. The MViTv2 video files: tests/test_maskfeat_mvit.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

import mimkit
from mimkit.plugin_api import ConfigError
from mimkit.testing import reference_vit_block
from slowfast_hog import ref_hog
from mimkit_maskfeat import convert_official

D, DEPTH, HEADS, C, S, P = 64, 2, 2, 3, 64, 16  # heads from the file's cfg (not D // 64 = 1)
N = (S // P) ** 2  # 16 patches
OUT = C * 9 * (P // 8) ** 2  # 108 HOG values per patch


def cfg_yaml(**mvit) -> str:
    """A cfg like ``cfg.dump()`` of ``in1k_VIT_B_MaskFeat_PT.yaml`` at the test's sizes."""
    m = {"PATCH_2D": True, "PATCH_KERNEL": [P, P], "PATCH_STRIDE": [P, P], "EMBED_DIM": D, "NUM_HEADS": HEADS,
         "PATCH_PADDING": [0, 0], "DEPTH": DEPTH, "MLP_RATIO": 4.0, "QKV_BIAS": True, "CLS_EMBED_ON": True, "MODE": "conv"} | mvit
    return yaml.safe_dump({"MVIT": m, "MASK": {"PRETRAIN_DEPTH": [DEPTH - 1], "HEAD_TYPE": "separate", "PRED_HOG": True},
                           "AUG": {"MASK_RATIO": 0.4}, "DATA": {"TRAIN_CROP_SIZE": S}, "MODEL": {"MODEL_NAME": "MaskMViT"}})


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, N + 1, D), "patch_embed.proj.weight": r(D, C, P, P),
          "patch_embed.proj.bias": r(D), "mask_token": r(1, 1, D),
          "hogs.0.weight_x": sobel, "hogs.0.weight_y": sobel.transpose(2, 3),
          "pred_head.transforms.0.0.weight": 1 + r(D), "pred_head.transforms.0.0.bias": r(D),
          "pred_head.projections.0.weight": r(OUT, D), "pred_head.projections.0.bias": r(OUT)}
    for i in range(DEPTH):
        pre = f"blocks.{i}."
        sd |= {pre + "norm1.weight": 1 + r(D), pre + "norm1.bias": r(D), pre + "attn.qkv.weight": r(3 * D, D),
               pre + "attn.qkv.bias": r(3 * D), pre + "attn.proj.weight": r(D, D), pre + "attn.proj.bias": r(D),
               pre + "norm2.weight": 1 + r(D), pre + "norm2.bias": r(D), pre + "mlp.fc1.weight": r(4 * D, D),
               pre + "mlp.fc1.bias": r(4 * D), pre + "mlp.fc2.weight": r(D, 4 * D), pre + "mlp.fc2.bias": r(D)}
    return sd




# MultiScaleBlock + MultiScaleAttention with no pooling, no rel-pos, no residual pooling: a pre-norm ViT block
ref_block = reference_vit_block


def ref_maskfeat(sd: dict, x: torch.Tensor, mask: torch.Tensor, heads: int = HEADS):
    """MaskMViT._maskfeat_forward (2-D patch, HOG) + MultipleMSELoss. mask (B, N) bool, True = masked.
    Returns (latent after the head's LayerNorm (B, 1 + N, D), pred (n_masked, OUT), label, loss)."""
    b = x.shape[0]
    side = S // P
    cells = ref_hog(x).flatten(1, 2)  # (B, 27, H/8, W/8)
    u = cells.shape[-1] // side
    label = cells.permute(0, 2, 3, 1).unfold(1, u, u).unfold(2, u, u).flatten(1, 2).flatten(2)[mask]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    m = mask.float().unsqueeze(-1)
    t = t * (1 - m) + sd["mask_token"].expand(b, N, -1) * m
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1) + sd["pos_embed"]
    for i in range(DEPTH):
        t = ref_block(t, sd, f"blocks.{i}.", heads)
    t = F.layer_norm(t, (D,), sd["pred_head.transforms.0.0.weight"], sd["pred_head.transforms.0.0.bias"], eps=1e-6)
    pred = F.linear(t[:, 1:][mask], sd["pred_head.projections.0.weight"], sd["pred_head.projections.0.bias"])
    return t, pred, label, F.mse_loss(pred, label)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("maskfeat") / "in1k_VIT_B_MaskFeat_PT_epoch_01600.pyth"
    sd = official_state()
    torch.save({"epoch": 1600, "model_state": sd, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": cfg_yaml()}, path)
    return path, sd


def _mask() -> torch.Tensor:
    hidden = torch.zeros(2, N, dtype=torch.bool)
    hidden[0, [1, 2, 5, 6, 9, 10]] = True  # a 3x2 block: 6 hidden
    hidden[1, [0, 4, 8, 12, 13, 14, 15]] = True  # 7 hidden: counts differ, as official block masks may
    return hidden


def test_importer_parity_with_slowfast_maskmvit(official_file) -> None:
    path, sd = official_file
    model = mimkit.load(path)
    enc = model.encoder
    assert (enc.embed_dim, len(enc.vit.blocks), enc.vit.blocks[0].attn.num_heads) == (D, DEPTH, HEADS)
    assert model.masker.config.ratio == 0.4 and model.target.dim == OUT
    x = torch.randn(2, C, S, S, generator=torch.Generator().manual_seed(1))
    hidden = _mask()
    with torch.no_grad():
        out = model({"image": x}, mask=hidden)
        latent, pred, label, loss = ref_maskfeat(sd, x, hidden)
    assert torch.equal(out.mask.hidden, hidden)
    assert (out.latent - latent).abs().max() <= 5e-6  # the encoder: every token, [CLS] included
    assert (out.pred[hidden] - pred).abs().max() <= 5e-6
    assert (out.target[hidden] - label).abs().max() <= 1e-6
    assert abs(float(out.loss) - float(loss)) <= 1e-6
    # frozen features for evaluation come from the same weights: the [CLS] of the unmasked input
    with torch.no_grad():
        cls = ref_maskfeat(sd, x, torch.zeros_like(hidden))[0][:, 0]
    assert (model.features(x) - cls).abs().max() <= 5e-6


def test_a_bare_model_state_imports_with_heads_from_the_width(tmp_path) -> None:
    """``torch.save(ckpt["model_state"])``: no cfg, so heads = width // 64 (the official ViT-B/L's
    12 / 16); here 1 head, so the reference runs with 1 head too. (mimkit-mae's importer, which also
    knows ``patch_embed`` + ``pos_embed`` files, leaves ``pred_head`` files to this one.)"""
    sd = official_state(5)
    torch.save(sd, tmp_path / "model_state.pth")
    model = mimkit.load(tmp_path / "model_state.pth")
    assert model.encoder.vit.blocks[0].attn.num_heads == 1 and model.masker.config.ratio == 0.4
    x = torch.randn(2, C, S, S, generator=torch.Generator().manual_seed(6))
    hidden = _mask()
    with torch.no_grad():
        out = model({"image": x}, mask=hidden)
        _, pred, _, loss = ref_maskfeat(sd, x, hidden, heads=1)
    assert (out.pred[hidden] - pred).abs().max() <= 5e-6 and abs(float(out.loss) - float(loss)) <= 1e-6


def test_convert_official_into_the_paper_preset(official_file) -> None:
    _, sd = official_file
    model = mimkit.build({"method": "maskfeat_vit_base_patch16", "data": {"img_size": S}, "model": {
        "encoder": {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS}}}).eval()
    missing, unexpected = model.load_state_dict(convert_official(sd), strict=True)
    assert not missing and not unexpected
    x = torch.randn(1, C, S, S, generator=torch.Generator().manual_seed(2))
    hidden = _mask()[:1]
    with torch.no_grad():
        out = model({"image": x}, mask=hidden)
        _, pred, _, loss = ref_maskfeat(sd, x, hidden)
    assert (out.pred[hidden] - pred).abs().max() <= 5e-6 and abs(float(out.loss) - float(loss)) <= 1e-6


def test_separate_qkv_is_fused_in_q_k_v_order() -> None:
    sd = official_state(3)
    sep = dict(sd)
    for i in range(DEPTH):
        for part in ("weight", "bias"):
            q, k, v = sep.pop(f"blocks.{i}.attn.qkv.{part}").chunk(3)
            sep |= {f"blocks.{i}.attn.q.{part}": q, f"blocks.{i}.attn.k.{part}": k, f"blocks.{i}.attn.v.{part}": v}
    a, b = convert_official(sd), convert_official({"model_state": sep})
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, why", [
    (lambda sd: sd.update({"decoder_embed.weight": torch.zeros(4, D)}), "MAE variant"),
    (lambda sd: sd.update({"pred_head.projections.1.weight": torch.zeros(4, D)}), "2 prediction heads"),
    (lambda sd: sd.update({"patch_embed.proj.weight": torch.zeros(D, C, 2, P, P)}), "3-D patch convolution"),
    (lambda sd: sd.pop("blocks.0.attn.qkv.bias"), "QKV_BIAS False"),
])
def test_other_slowfast_layouts_are_refused(tmp_path, change, why) -> None:
    sd = official_state()
    change(sd)
    path = tmp_path / "x.pyth"
    torch.save({"epoch": 1, "model_state": sd, "cfg": cfg_yaml()}, path)
    with pytest.raises(ConfigError, match=why):
        mimkit.load(path)


def test_a_padded_patch_convolution_is_refused(tmp_path) -> None:
    torch.save({"epoch": 1, "model_state": official_state(), "cfg": cfg_yaml(PATCH_PADDING=[1, 1])}, tmp_path / "p.pyth")
    with pytest.raises(ConfigError, match=r"PATCH_PADDING \[1, 1\]"):
        mimkit.load(tmp_path / "p.pyth")
