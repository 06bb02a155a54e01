"""Official CMAE checkpoints (ZhichengHuang/CMAE, mmengine layout) through ``mimkit.load``.

The reference below is written in plain torch from the official formulas, on the official key
names: ``CMAEViT.forward`` + ``random_masking`` (block-wise), ``MAEPretrainDecoder.forward``,
``NonLinearNeck.forward`` (``with_avg_pool=False``), ``CMAE.forward_train`` and
``CMAEPretrainHead.forward`` (one process: labels ``arange(B)``). Random weights are saved in
the layout mmengine's ``Runner.save_checkpoint`` writes; nothing is downloaded.
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.checkpoint import load_torch
from mimkit.plugin_api import CheckpointError
from mimkit_contrastive.convert import convert_official, import_official, recipe_for

D, C, P, IMG, DEPTH, HEADS = 48, 3, 4, 32, 2, 3  # p*p*C = 48 = D: the feature decoder's output feeds the projector
DEC, DEC_DEPTH, FDEC_DEPTH, DEC_HEADS = 32, 2, 1, 16
HID, OUT = 64, 16
N = (IMG // P) ** 2
EPS = 1e-6
OVERRIDES = [f"model.encoder.num_heads={HEADS}"]  # heads are not in the weights (48 is no official width)


# ---- official weights -----------------------------------------------------------------------------


def _rand(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _layer(g: torch.Generator, p: str, d: int, sd: dict) -> None:
    """transformer_utils.TransformerEncoderLayer (qkv_bias=True, init_values=0): ln1, attn, ln2, ffn."""
    for ln in ("ln1", "ln2"):
        sd[f"{p}{ln}.weight"] = 1 + _rand(g, d, scale=0.1)
        sd[f"{p}{ln}.bias"] = _rand(g, d, scale=0.1)
    for name, o, i in (("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("ffn.layers.0.0", 4 * d, d), ("ffn.layers.1", d, 4 * d)):
        sd[f"{p}{name}.weight"] = _rand(g, o, i, scale=i**-0.5)
        sd[f"{p}{name}.bias"] = _rand(g, o, scale=0.1)


def _vit(g: torch.Generator, p: str, final_norm: bool, sd: dict) -> None:
    sd[p + "cls_token"] = _rand(g, 1, 1, D, scale=0.1)
    sd[p + "pos_embed"] = _rand(g, 1, N + 1, D, scale=0.1)  # random: proves the stored table is used
    sd[p + "patch_embed.projection.weight"] = _rand(g, D, C, P, P, scale=(C * P * P) ** -0.5)
    sd[p + "patch_embed.projection.bias"] = _rand(g, D, scale=0.1)
    for i in range(DEPTH):
        _layer(g, f"{p}layers.{i}.", D, sd)
    if final_norm:
        sd[p + "ln1.weight"] = 1 + _rand(g, D, scale=0.1)
        sd[p + "ln1.bias"] = _rand(g, D, scale=0.1)


def _decoder(g: torch.Generator, p: str, depth: int, out: int, sd: dict) -> None:
    sd[p + "decoder_embed.weight"] = _rand(g, DEC, D, scale=D**-0.5)
    sd[p + "decoder_embed.bias"] = _rand(g, DEC, scale=0.1)
    sd[p + "mask_token"] = _rand(g, 1, 1, DEC, scale=0.1)
    sd[p + "decoder_pos_embed"] = _rand(g, 1, N + 1, DEC, scale=0.1)
    for i in range(depth):
        _layer(g, f"{p}decoder_blocks.{i}.", DEC, sd)
    sd[p + "ln1.weight"] = 1 + _rand(g, DEC, scale=0.1)
    sd[p + "ln1.bias"] = _rand(g, DEC, scale=0.1)
    sd[p + "decoder_pred.weight"] = _rand(g, out, DEC, scale=DEC**-0.5)
    sd[p + "decoder_pred.bias"] = _rand(g, out, scale=0.1)


def _neck(g: torch.Generator, p: str, din: int, sd: dict) -> None:
    """NonLinearNeck(num_layers=2, with_bias=True, with_last_bn=False): fc0, bn0 (SyncBN), fc1 (no bias)."""
    sd[p + "fc0.weight"] = _rand(g, HID, din, scale=din**-0.5)
    sd[p + "fc0.bias"] = _rand(g, HID, scale=0.1)
    sd[p + "bn0.weight"] = 1 + _rand(g, HID, scale=0.1)
    sd[p + "bn0.bias"] = _rand(g, HID, scale=0.1)
    sd[p + "bn0.running_mean"] = _rand(g, HID, scale=0.1)
    sd[p + "bn0.running_var"] = 0.5 + torch.rand(HID, generator=g)
    sd[p + "bn0.num_batches_tracked"] = torch.tensor(1000)
    sd[p + "fc1.weight"] = _rand(g, OUT, HID, scale=HID**-0.5)


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A CMAE.state_dict() with the official module names (momentum branch different from the online one)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _vit(g, "backbone.", True, sd)
    _vit(g, "target_backbone.", False, sd)  # CMAEViT(final_norm=False): no ln1
    _decoder(g, "pixel_decoder.", DEC_DEPTH, P * P * C, sd)
    _decoder(g, "feature_decoder.", FDEC_DEPTH, P * P * C, sd)
    _neck(g, "projector.", D, sd)
    _neck(g, "target_projector.", D, sd)
    _neck(g, "head.predictor.", OUT, sd)
    return sd


def mmengine_file(state: dict) -> dict:
    """What mmengine's Runner.save_checkpoint writes (plain-typed message hub here)."""
    return {"meta": {"epoch": 300, "iter": 937500, "cfg": "model = dict(type='CMAE', ...)", "seed": 60,
                     "experiment_name": "cmae_vit-base-p16_32xb128-coslr-300e_in1k", "mmengine_version": "0.10.1"},
            "state_dict": state,
            "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 300, "iter": 937500}, "resumed_keys": {}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.4e-3, "betas": (0.9, 0.95), "weight_decay": 0.05,
                                                          "params": [0, 1]}]},
            "param_schedulers": [{"start_factor": 1e-4, "last_epoch": 40}]}


# ---- the reference, from the official formulas ---------------------------------------------------------


def ln(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps=EPS)


def lin(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[p + "weight"], sd.get(p + "bias"))


def ref_layer(sd: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    qkv = lin(sd, p + "attn.qkv.", ln(sd, p + "ln1.", x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
    x = x + lin(sd, p + "attn.proj.", (attn @ v).transpose(1, 2).reshape(b, n, d))
    h = F.gelu(lin(sd, p + "ffn.layers.0.0.", ln(sd, p + "ln2.", x)))
    return x + lin(sd, p + "ffn.layers.1.", h)


def ref_random_masking(x: torch.Tensor, noise: torch.Tensor, ratio: float = 0.65):
    """CMAEViT.random_masking with the noise given: 2x2-patch blocks, kept tokens first."""
    n, length, d = x.shape
    seq_len = length // 4
    len_keep = int(seq_len * (1 - ratio))
    ids_keep_s = torch.argsort(noise, dim=1)[:, :len_keep]
    m = torch.scatter(torch.zeros(n, seq_len, dtype=x.dtype), 1, ids_keep_s, 1.0)
    side = int(seq_len**0.5)
    m = m.reshape(n, side, side).unsqueeze(2).unsqueeze(4).expand(-1, -1, 2, -1, 2).flatten(1, 2).flatten(2, 3).flatten(1)
    mask_index = torch.argsort(m, dim=-1, descending=True)
    ids_keep = mask_index[:, : 4 * len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, d))
    return x_masked, 1.0 - m, torch.argsort(mask_index, dim=1), ids_keep


def ref_vit(sd: dict, p: str, x: torch.Tensor, noise: torch.Tensor | None, final_norm: bool, heads: int = HEADS):
    """CMAEViT.forward (use_cls=True); noise None = mask_ratio 0 (the target branch)."""
    b = x.shape[0]
    t = F.conv2d(x, sd[p + "patch_embed.projection.weight"], sd[p + "patch_embed.projection.bias"], stride=P)
    t = t.flatten(2).transpose(1, 2) + sd[p + "pos_embed"][:, 1:]
    if noise is None:
        ids_keep = torch.arange(t.shape[1]).expand(b, -1)
        mask, ids_restore = torch.zeros(b, t.shape[1], dtype=t.dtype), ids_keep
    else:
        t, mask, ids_restore, ids_keep = ref_random_masking(t, noise)
    cls = (sd[p + "cls_token"] + sd[p + "pos_embed"][:, :1]).expand(b, -1, -1)
    t = torch.cat([cls, t], 1)
    for i in range(DEPTH):
        t = ref_layer(sd, f"{p}layers.{i}.", t, heads)
    if final_norm:
        t = ln(sd, p + "ln1.", t)
    return t, mask, ids_restore, ids_keep


def ref_decoder(sd: dict, p: str, x: torch.Tensor, ids_restore: torch.Tensor, depth: int) -> torch.Tensor:
    """MAEPretrainDecoder.forward."""
    x = lin(sd, p + "decoder_embed.", x)
    tokens = sd[p + "mask_token"].repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:], tokens], 1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], 1) + sd[p + "decoder_pos_embed"]
    for i in range(depth):
        x = ref_layer(sd, f"{p}decoder_blocks.{i}.", x, DEC_HEADS)
    return lin(sd, p + "decoder_pred.", ln(sd, p + "ln1.", x))[:, 1:]


def ref_neck(sd: dict, p: str, x: torch.Tensor, training: bool) -> torch.Tensor:
    """NonLinearNeck.forward (with_avg_pool=False): (B, 1, D) -> (B, 1, out)."""
    x = lin(sd, p + "fc0.", x[:, 0, :])
    x = F.batch_norm(x, sd[p + "bn0.running_mean"].clone(), sd[p + "bn0.running_var"].clone(), sd[p + "bn0.weight"],
                     sd[p + "bn0.bias"], training=training, eps=EPS)
    return lin(sd, p + "fc1.", F.relu(x)).unsqueeze(1)


def ref_cmae(sd: dict, img: torch.Tensor, img_t: torch.Tensor, noise: torch.Tensor, training: bool) -> dict:
    """CMAE.forward_train + CMAEPretrainHead.forward (temperature 0.07, norm_pix, weights 1)."""
    latent_s, mask_s, ids_restore, ids_keep = ref_vit(sd, "backbone.", img, noise, True)
    latent_t = ref_vit(sd, "target_backbone.", img_t, None, False)[0]
    pred_pixel = ref_decoder(sd, "pixel_decoder.", latent_s, ids_restore, DEC_DEPTH)
    pred_feature = ref_decoder(sd, "feature_decoder.", latent_s, ids_restore, FDEC_DEPTH)
    proj_s = ref_neck(sd, "projector.", pred_feature.mean(1, keepdim=True), training)
    proj_t = ref_neck(sd, "target_projector.", latent_t[:, 1:].mean(1, keepdim=True), training)
    b = img.shape[0]
    target = img.reshape(b, 3, IMG // P, P, IMG // P, P)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(b, N, P * P * 3)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss_rc = (((pred_pixel - target) ** 2).mean(-1) * mask_s).sum() / mask_s.sum()
    pred_s = ref_neck(sd, "head.predictor.", proj_s, training)
    score = F.normalize(pred_s[:, 0], dim=1) @ F.normalize(proj_t[:, 0], dim=1).t() / 0.07
    loss_ct = 2 * 0.07 * F.cross_entropy(score, torch.arange(b))
    return {"latent": latent_s, "ids_keep": ids_keep, "mask": mask_s, "latent_t": latent_t, "pred": pred_pixel,
            "features": pred_feature, "proj_s": proj_s[:, 0], "pred_s": pred_s[:, 0], "proj_t": proj_t[:, 0],
            "loss_rc": loss_rc, "loss_ct": loss_ct, "loss": loss_ct + loss_rc}


def in_token_order(latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The official latent has the kept tokens in its sort's order; mimkit's in ascending token order."""
    order = torch.argsort(ids_keep, dim=1)
    patches = torch.gather(latent[:, 1:], 1, order.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
    return torch.cat([latent[:, :1], patches], 1)


def _batch(seed: int = 1, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, IMG, IMG, generator=g)
    xt = torch.randn(b, C, IMG, IMG, generator=g)
    noise = torch.rand(b, N // 4, generator=g)  # one draw per 2x2 block, as random_masking
    return {"image": x, "image_target": xt}, noise


@pytest.fixture(scope="module")
def full_file(tmp_path_factory) -> tuple[Path, dict]:
    state = official_state()
    path = tmp_path_factory.mktemp("cmae") / "cmae_vit-tiny_pretrain.pth"
    torch.save(mmengine_file(state), path)
    return path, state


# ---- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training,dtype", [(False, torch.float32), (False, torch.float64), (True, torch.float64)],
                         ids=["eval_fp32", "eval_fp64", "train_bn_batch_stats_fp64"])
def test_full_checkpoint_matches_the_official_forward(full_file, training: bool, dtype: torch.dtype) -> None:
    """fp32: features/outputs within 1e-5, losses within 1e-6. fp64 (same weights, cast): within
    1e-10 (the pixel loss 1e-7), which also catches what fp32 rounding could hide (a LayerNorm eps
    of 1e-5 instead of 1e-6, say)."""
    path, sd = full_file
    model = mimkit.load(path, overrides=OVERRIDES).to(dtype)
    assert model.recipe.model["name"] == "cmae" and model.config.teacher["final_norm"] is False
    model.train(training)
    batch, noise = _batch()
    batch = {k: v.to(dtype) for k, v in batch.items()}
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    with torch.no_grad():
        out = model(batch, noise=noise)
    ref = ref_cmae(sd, batch["image"], batch["image_target"], noise, training)
    assert torch.equal(out.mask.hidden.to(dtype), ref["mask"]) and int(out.mask.hidden[0].sum()) == N - 20
    tol = dict(atol=1e-5, rtol=0) if dtype == torch.float32 else dict(atol=1e-10, rtol=0)
    loss_tol = dict(atol=1e-6, rtol=0) if dtype == torch.float32 else dict(atol=1e-10, rtol=0)
    torch.testing.assert_close(out.latent, in_token_order(ref["latent"], ref["ids_keep"]), **tol)
    torch.testing.assert_close(out.extra["teacher_latent"], ref["latent_t"], **tol)
    torch.testing.assert_close(out.pred, ref["pred"], **tol)
    torch.testing.assert_close(out.extra["features"], ref["features"], **tol)
    torch.testing.assert_close(out.extra["projection"], ref["proj_s"], **tol)
    torch.testing.assert_close(out.extra["query"], ref["pred_s"], **tol)
    torch.testing.assert_close(out.extra["key"], ref["proj_t"], **tol)
    torch.testing.assert_close(out.losses["nce"], ref["loss_ct"], **loss_tol)
    if dtype == torch.float64:  # the core's pixel target is computed in fp32 (its mixed-precision rule)
        loss_tol = dict(atol=1e-7, rtol=0)
    torch.testing.assert_close(out.losses["pix"], ref["loss_rc"], **loss_tol)
    torch.testing.assert_close(out.loss, ref["loss"], **loss_tol)
    assert float(ref["loss_ct"]) > 0.05 and float(ref["loss_rc"]) > 0.1  # a real comparison, not 0 == 0


def test_full_checkpoint_keys_and_recipe(full_file) -> None:
    path, sd = full_file
    conv = convert_official(sd)
    assert torch.equal(conv["encoder.vit.blocks.1.mlp.fc1.weight"], sd["backbone.layers.1.ffn.layers.0.0.weight"])
    assert torch.equal(conv["teacher.copies.encoder.vit.blocks.0.attn.qkv.bias"], sd["target_backbone.layers.0.attn.qkv.bias"])
    assert torch.equal(conv["decoder.norm.weight"], sd["pixel_decoder.ln1.weight"])
    assert torch.equal(conv["feature_decoder.pos_embed"], sd["feature_decoder.decoder_pos_embed"])
    assert torch.equal(conv["predictor.net.3.weight"], sd["head.predictor.fc1.weight"])
    assert torch.equal(conv["teacher.copies.projector.net.1.running_var"], sd["target_projector.bn0.running_var"])
    model = mimkit.load(path, overrides=OVERRIDES)
    own = model.state_dict()
    assert set(conv) == set(own)  # every weight of the model comes from the file
    for k, v in conv.items():
        assert torch.equal(own[k], v), k
    m = recipe_for(sd)["model"]
    assert m["encoder"]["img_size"] == IMG and m["encoder"]["patch_size"] == P and m["encoder"]["depth"] == DEPTH
    assert (m["decoder"]["embed_dim"], m["decoder"]["depth"], m["feature_decoder"]["depth"]) == (DEC, DEC_DEPTH, FDEC_DEPTH)
    assert (m["projector"]["hidden_dim"], m["projector"]["out_dim"], m["projector"]["last_bias"]) == (HID, OUT, False)


def test_official_vit_b_sizes_are_read_from_the_weights() -> None:
    """The shipped config's sizes (ViT-B/16, decoders 512x8 and 512x2, necks 1536-256) on meta tensors."""
    with torch.device("meta"):
        sd = {}

        def t(*shape):
            return torch.empty(*shape)
        sd["backbone.patch_embed.projection.weight"] = t(768, 3, 16, 16)
        sd["backbone.pos_embed"] = t(1, 197, 768)
        for i in range(12):
            sd[f"backbone.layers.{i}.ffn.layers.0.0.weight"] = t(3072, 768)
        for p, depth in (("pixel_decoder.", 8), ("feature_decoder.", 2)):
            sd[p + "decoder_embed.weight"] = t(512, 768)
            for i in range(depth):
                sd[f"{p}decoder_blocks.{i}.ffn.layers.0.0.weight"] = t(2048, 512)
        for p, din in (("projector.", 768), ("head.predictor.", 256)):
            sd[p + "fc0.weight"], sd[p + "fc1.weight"] = t(1536, din), t(256, 1536)
    m = recipe_for({"state_dict": sd})["model"]
    assert {k: m["encoder"][k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")} == \
        {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0}
    assert [m[k][f] for k in ("decoder", "feature_decoder") for f in ("embed_dim", "depth", "num_heads")] == \
        [512, 8, 16, 512, 2, 16]
    assert m["projector"] == m["predictor"] == {"hidden_dim": 1536, "out_dim": 256, "layers": 2, "norm": "bn",
                                                "last_bias": False, "bn_eps": 1e-6}
    assert m["masker"] == {"name": "cmae_block", "ratio": 0.65, "block": 2} and m["teacher"]["final_norm"] is False
    # mmcls arch 's' (768 wide, 8 layers, MLP 2304) has 8 heads, not the 12 of the width table
    sd8 = {k: v for k, v in sd.items() if not re.match(r"backbone\.layers\.([89]|1\d)\.", k)}
    sd8 = {k: (torch.empty(2304, 768, device="meta") if "ffn" in k and k.startswith("backbone.") else v) for k, v in sd8.items()}
    assert recipe_for(sd8)["model"]["encoder"]["num_heads"] == 8


def test_backbone_only_file_loads_both_encoders_and_warns(tmp_path: Path) -> None:
    sd = official_state(seed=2)
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    path = tmp_path / "init_weight.pth"
    torch.save({"state_dict": backbone, "author": "CMAE"}, path)  # tools/extract_backbone_weights.py
    with pytest.warns(UserWarning, match="backbone-only"):
        model = mimkit.load(path, overrides=OVERRIDES)
    batch, noise = _batch(seed=3)
    with torch.no_grad():
        out = model(batch, noise=noise)
        feats = model.encoder(batch["image"])  # all tokens, as for feature extraction
    ref_lat, ref_mask, _, ids_keep = ref_vit(sd, "backbone.", batch["image"], noise, True)
    assert torch.equal(out.mask.hidden.float(), ref_mask)
    torch.testing.assert_close(out.latent, in_token_order(ref_lat, ids_keep), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats, ref_vit(sd, "backbone.", batch["image"], None, True)[0], atol=1e-5, rtol=0)
    # the momentum encoder starts as a copy of the online one (official init_weights), without final norm
    ref_t = ref_vit(sd, "backbone.", batch["image_target"], None, False)[0]
    torch.testing.assert_close(out.extra["teacher_latent"], ref_t, atol=1e-5, rtol=0)
    assert model.decoder.embed.weight.shape == (512, D)  # the shipped config's decoder, at its init


def test_inconsistent_or_foreign_files(tmp_path: Path, full_file) -> None:
    _, sd = full_file
    extra = dict(sd, **{"backbone.layers.0.attn.q_bias": torch.zeros(D)})
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.attn\.q_bias"):
        convert_official(extra)
    missing = {k: v for k, v in sd.items() if k != "feature_decoder.decoder_pred.weight"}
    path = tmp_path / "missing.pth"
    torch.save(mmengine_file(missing), path)
    with pytest.raises(CheckpointError, match=r"missing key.*feature_decoder\.decoder_pred\.weight"):
        mimkit.load(path)
    no_mlp = {k: v for k, v in sd.items() if k != "backbone.layers.0.ffn.layers.0.0.weight"}
    with pytest.raises(CheckpointError, match=r"missing key.*backbone\.layers\.0\.ffn\.layers\.0\.0\.weight"):
        import_official({"state_dict": no_mlp})
    last_bn = dict(sd, **{"projector.bn1.weight": torch.ones(OUT)})
    with pytest.raises(CheckpointError, match=r"projector\.bn1\.weight"):
        import_official({"state_dict": last_bn})
    wide = dict(sd, **{"target_backbone.cls_token": torch.zeros(1, 1, 2 * D)})
    with pytest.raises(CheckpointError, match=r"target_backbone\.cls_token"):
        import_official({"state_dict": wide})
    odd = {"state_dict": {k[9:]: v for k, v in sd.items() if k.startswith("backbone.")}, "author": "CMAE"}
    odd["state_dict"]["ln.weight"] = odd["state_dict"].pop("ln1.weight")
    with pytest.raises(CheckpointError, match=r"ln1\.bias|ln\.weight|ln1\.weight"):
        import_official(odd)
    # not CMAE: fall through (None), and mimkit.load says no importer knows the file
    assert import_official({"state_dict": {"foo.weight": torch.zeros(2)}}) is None
    assert import_official({"state_dict": odd["state_dict"]}) is None  # an mmcls ViT without CMAE's marker
    assert import_official([1, 2]) is None
    moco = {k: v for k, v in sd.items() if k.startswith(("backbone.", "projector.", "head.predictor."))}
    assert import_official({"state_dict": moco}) is None  # mmselfsup MoCo v3 also has backbone + head.predictor
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no installed importer recognizes"):
        mimkit.load(path)



def test_raw_mmengine_training_checkpoint_with_history_buffers(tmp_path: Path, full_file, monkeypatch) -> None:
    """A training checkpoint's message_hub holds mmengine HistoryBuffer objects (numpy histories):
    the core reader alone refuses them; with the plugin's stand-ins (hook mimkit_pickled) mimkit.load
    reads them as inert bags, without mmengine."""
    _, sd = full_file
    with monkeypatch.context() as mp:  # an importable stand-in for mmengine's class, only while saving
        names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
        for name in names:
            mp.setitem(sys.modules, name, types.ModuleType(name))

        class HistoryBuffer:
            def __init__(self) -> None:
                self.max_length = 1000000
                self._log_history = np.array([2.53, 2.41])
                self._count_history = np.array([1, 1])

        HistoryBuffer.__module__, HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
        sys.modules[names[-1]].HistoryBuffer = HistoryBuffer
        raw = mmengine_file(sd)
        raw["message_hub"]["log_scalars"] = {"train/loss": HistoryBuffer(), "train/lr": HistoryBuffer()}
        raw["message_hub"]["runtime_info"]["train/grad_norm"] = np.float64(1.25)  # a numpy scalar
        path = tmp_path / "epoch_300.pth"
        torch.save(raw, path)
    assert "mmengine" not in sys.modules or not hasattr(sys.modules["mmengine"], "logging")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_torch(path)  # the core reader without the plugins' stand-ins
    model = mimkit.load(path, overrides=OVERRIDES)
    own = model.state_dict()
    for k, v in convert_official(sd).items():
        assert torch.equal(own[k], v), k
    assert not model.training and model.recipe.model["encoder"]["num_heads"] == HEADS
