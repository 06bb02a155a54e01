"""Import SlowFast MaskFeat pretraining checkpoints (``MaskMViT``'s ``model_state``).

What facebookresearch/SlowFast releases (``projects/maskfeat/README.md``): ImageNet-1K ViT-B and
ViT-L (``in1k_VIT_{B,L}_MaskFeat_PT_epoch_01600.pyth``) and Kinetics-400 MViTv2-S / MViTv2-L
(``k400_MVIT_{S,L}_MaskFeat_PT_epoch_00{300,800}.pyth``). A file is ``{"epoch", "model_state",
"optimizer_state", "cfg"}`` (``utils/checkpoint.py`` ``save_checkpoint``: the DDP wrapper is taken
off, so no ``module.`` prefix; ``cfg`` is the YAML dump of the run's config).

The image "ViT" is the MViT class configured without pooling (``configs/masked_ssl/
in1k_VIT_{B,L}_MaskFeat_PT.yaml``: 2-D 16x16 patch convolution, one learned position table with
the [CLS] entry, no ``DIM_MUL``/``POOL_*`` strides, so ``MultiScaleAttention`` builds no pooling
and every block is a pre-norm ViT block with a fused ``qkv``, LayerNorm eps 1e-6). ``MaskMViT``
deletes the final ``norm`` and the classifier; the prediction head ``pred_head`` is a LayerNorm
(``transforms.0.0``) and a linear layer (``projections.0``) on the last kept block. Key map::

    patch_embed.proj.*            -> encoder.vit.patch_embed.proj.*
    cls_token, pos_embed          -> encoder.vit.cls_token, encoder.vit.pos_embed
    blocks.N.*                    -> encoder.vit.blocks.N.*   (attn.q/k/v, if separate, fused to qkv)
    mask_token                    -> encoder.mask_token
    pred_head.transforms.0.0.*    -> encoder.vit.norm.*       (the head's LayerNorm = the encoder's final norm)
    pred_head.projections.0.*     -> decoder.head.*
    hogs.0.weight_x/_y            -> dropped (the fixed Sobel kernels of HOGLayerC)

The MViTv2 video files (``k400_MVITv2_{S,L}_16x4_MaskFeat_PT.yaml``: Conv3d stem, pooling
attention, relative positions, stage-wise widths) import into the ``mvit_video`` encoder, whose
parameter names are SlowFast's; the recipe comes from the file's ``cfg`` (``MVIT``, ``MASK``,
``DATA``, ``AUG``), checked against the weights::

    patch_embed.*, cls_token, pos_embed_*, blocks.N.*  -> encoder.*   (attn.q/k/v fused to qkv)
    mask_token                    -> encoder.mask_token
    pred_head.transforms.0.0.*    -> encoder.norm.*     (the head's LayerNorm)
    pred_head.projections.0.*     -> decoder.head.*
    hogs.0.weight_x/_y            -> dropped
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from mimkit.plugin_api import ConfigError

_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
_MVIT_MARKS = {  # key pattern -> what it means in SlowFast's MViT
    r"\.attn\.pool_[qkv]\.": "pooling attention (attn.pool_q/k/v)",
    r"\.attn\.rel_pos_[hwt]$": "relative positions (attn.rel_pos_h/w/t)",
    r"^blocks\.\d+\.proj\.weight$": "widths that change between stages (blocks.N.proj)",
    r"^pos_embed_(spatial|temporal|class)$": "separate space/time position tables (pos_embed_spatial/temporal)",
}


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def model_state(obj: Any) -> Mapping[str, Any] | None:
    """The ``MaskMViT`` state of a SlowFast file (``{"model_state": ...}``) or of a bare state
    dict with MaskMViT's ``pred_head``; None for anything else."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model_state") if isinstance(obj.get("model_state"), Mapping) else obj
    if state is not obj and not any(k.startswith(("patch_embed.", "module.patch_embed.")) for k in state):
        return None  # a SlowFast file, but not of a transformer
    if state is obj and not any(str(k).startswith(("pred_head.", "module.pred_head.")) for k in state):
        return None
    if state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def slowfast_cfg(obj: Any) -> dict[str, Any]:
    """The run's config (the ``cfg`` YAML dump) as a dict; {} when absent or unreadable."""
    text = obj.get("cfg") if isinstance(obj, Mapping) else None
    if not isinstance(text, str):
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _mvit_why(state: Mapping[str, Any]) -> list[str]:
    """What an MViTv2 MaskFeat state holds that ``mvit_video`` + the linear head do not build."""
    why: list[str] = []
    w = state.get("patch_embed.proj.weight")
    if not isinstance(w, torch.Tensor) or w.ndim != 5:
        why.append("no 3-D patch_embed.proj.weight (an image MViTv2, PATCH_2D; mvit_video is the video model)")
    if any(k.startswith("decoder_embed.") for k in state):
        why.append("an MAE decoder (MASK.MAE_ON: decoder_embed)")
    heads = {m.group(1) for k in state if (m := re.match(r"pred_head\.projections\.(\d+)\.", k))}
    if len(heads) != 1:
        why.append(f"{len(heads)} prediction heads (pred_head.projections.*; MASK.PRETRAIN_DEPTH); mimkit's linear "
                   "head is one")
    if any(re.match(r"pred_head\.transforms\.\d+\.\d+\.attn\.", k) for k in state):
        why.append("a transformer prediction head (MASK.HEAD_TYPE separate_xformer)")
    if any(k.startswith("norm_stem.") for k in state):
        why.append("a LayerNorm after the stem (MVIT.NORM_STEM)")
    if any(re.search(r"\.gamma_[12]$", k) for k in state):
        why.append("layer scale (MVIT.LAYER_SCALE_INIT_VALUE)")
    if any(k.startswith("head.projection.") for k in state):
        why.append("a classifier (head.projection): a fine-tuned file, not MaskFeat pretraining")
    if any(k.startswith("rev_backbone.") for k in state):
        why.append("a reversible MViT (MVIT.REV)")
    return why


def architecture(state: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(the architecture a SlowFast state describes, the reasons it cannot be imported; [] = it can)."""
    found = [what for pat, what in _MVIT_MARKS.items() if any(re.search(pat, k) for k in state)]
    w = state.get("patch_embed.proj.weight")
    if found:
        return "MViTv2", _mvit_why(state)
    why: list[str] = []
    if any(k.startswith("decoder_embed.") for k in state):
        return "ViT with an MAE decoder (SlowFast MASK.MAE_ON: its MAE variant, not MaskFeat)", [
            "an MAE decoder (decoder_embed, decoder blocks) instead of MaskFeat's linear HOG head"]
    if w is not None and w.ndim == 5:
        return "video ViT (3-D patch embedding)", [
            f"a 3-D patch convolution {tuple(w.shape)} with learned positions, while mimkit's video_vit "
            "uses fixed sinusoid positions"]
    if w is None or "pos_embed" not in state:
        why.append("no 2-D patch_embed.proj.weight and pos_embed")
    if "cls_token" not in state:
        why.append("no cls_token (MVIT.CLS_EMBED_ON False)")
    if any(k.startswith("head.projection.") for k in state):
        why.append("a classifier (head.projection): a fine-tuned file, not MaskFeat pretraining")
    heads = {m.group(1) for k in state if (m := re.match(r"pred_head\.projections\.(\d+)\.", k))}
    if len(heads) != 1:
        why.append(f"{len(heads)} prediction heads (pred_head.projections.*); mimkit's linear head is one")
    if any(re.match(r"pred_head\.transforms\.\d+\.\d+\.attn\.", k) for k in state):
        why.append("a transformer prediction head (MASK.HEAD_TYPE separate_xformer)")
    if any(k.startswith("norm_stem.") for k in state):
        why.append("a LayerNorm after the stem (MVIT.NORM_STEM)")
    if any(re.search(r"\.gamma_[12]$", k) for k in state):
        why.append("layer scale (MVIT.LAYER_SCALE_INIT_VALUE)")
    if "blocks.0.attn.qkv.weight" in state and "blocks.0.attn.qkv.bias" not in state:
        why.append("attention without q/k/v biases (MVIT.QKV_BIAS False)")
    return "ViT (SlowFast MViT without pooling)", why


def refuse(state: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming the architecture when ``state`` cannot become a mimkit model."""
    arch, why = architecture(state)
    if not why:
        return
    w = state.get("patch_embed.proj.weight")
    shape = f", patch embedding {tuple(w.shape)}" if isinstance(w, torch.Tensor) else ""
    extra = (" mimkit's mvit_video encoder builds SlowFast's video MViTv2 MaskFeat (a Conv3d stem, pooling "
             "attention, one linear HOG head, as k400_MVITv2_{S,L}_16x4_MaskFeat_PT.yaml).") if arch == "MViTv2" else ""
    raise ConfigError(f"SlowFast checkpoint (model_state): found a {arch} ({_count(state, 'blocks.')} blocks{shape}) "
                      f"with {'; '.join(why)}: it cannot be imported.{extra}")


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SlowFast ``MaskMViT`` (ViT configuration) key names -> mimkit's ``masked`` model
    (``maskfeat_vit`` encoder + ``linear`` decoder). Accepts the file or its ``model_state``."""
    state = model_state(state) or state
    refuse(state)
    if architecture(state)[0] == "MViTv2":
        return convert_mvit(state)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("hogs."):
            if k.endswith(("weight_x", "weight_y")):
                sobel = _SOBEL if k.endswith("weight_x") else _SOBEL.t()
                if v.shape[-2:] != (3, 3) or not torch.equal(v.float().reshape(-1, 3, 3)[0], sobel):
                    raise ConfigError(f"SlowFast MaskFeat checkpoint: {k} is not the Sobel kernel of HOGLayerC")
            continue  # fixed buffers, recomputed by the hog target
        if k.startswith("pred_head.transforms.0.0."):
            out["encoder.vit.norm." + k[len("pred_head.transforms.0.0."):]] = v
        elif k.startswith("pred_head.projections.0."):
            out["decoder.head." + k[len("pred_head.projections.0."):]] = v
        elif k == "mask_token":
            out["encoder.mask_token"] = v
        elif m := re.match(r"(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$", k):
            if m.group(2) == "q":  # SEPARATE_QKV: fuse to timm's qkv (rows q, k, v)
                parts = [state[f"{m.group(1)}{p}.{m.group(3)}"] for p in "qkv"]
                out[f"encoder.vit.{m.group(1)}qkv.{m.group(3)}"] = torch.cat(parts, 0)
        elif k.startswith(("patch_embed.proj.", "blocks.")) or k in ("cls_token", "pos_embed"):
            out["encoder.vit." + k] = v
        else:
            raise ConfigError(f"SlowFast MaskFeat checkpoint: unexpected key {k!r} for a ViT MaskMViT")
    return out


def recipe_for(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of the ViT MaskFeat a state describes: sizes from the weights, heads and the mask
    ratio from the file's ``cfg`` (without one: width // 64 heads, the official ViT-B/L's 12/16)."""
    cfg = cfg or {}
    mvit, aug = cfg.get("MVIT") or {}, cfg.get("AUG") or {}
    w = state["patch_embed.proj.weight"]  # (D, C, p, p)
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n = state["pos_embed"].shape[1] - 1
    side = int(round(n ** 0.5))
    if side * side != n or w.shape[2] != w.shape[3]:
        raise ConfigError(f"SlowFast MaskFeat checkpoint: pos_embed of {n} patches / patch {tuple(w.shape[2:])} "
                          "is not a square grid of square patches")
    heads = int(mvit.get("NUM_HEADS") or max(1, dim // 64))
    out_dim = state["pred_head.projections.0.weight"].shape[0]
    nbins, cell = 9, 8  # MaskMViT: HOGLayerC(nbins=9, pool=8)
    if patch % cell or out_dim != chans * nbins * (patch // cell) ** 2:
        raise ConfigError(f"SlowFast MaskFeat checkpoint: the head predicts {out_dim} values, not the HOG of a "
                          f"{patch}x{patch}x{chans} patch ({chans} x {nbins} bins x {(patch // cell) ** 2} cells)")
    stride = mvit.get("PATCH_STRIDE")
    if stride is not None and list(stride)[-2:] != [patch, patch]:
        raise ConfigError(f"SlowFast MaskFeat checkpoint: MVIT.PATCH_STRIDE {stride} is not the kernel {patch}: "
                          "overlapping patches are not a ViT")
    padding = mvit.get("PATCH_PADDING")
    if padding is not None and any(int(v) for v in padding):
        raise ConfigError(f"SlowFast MaskFeat checkpoint: MVIT.PATCH_PADDING {padding}: a padded patch "
                          "convolution is not a ViT patch embedding")
    return {"model": {
        "name": "masked",
        "encoder": {"name": "maskfeat_vit", "model": "vit_base_patch16_224", "img_size": side * patch,
                    "patch_size": patch, "in_chans": chans, "embed_dim": dim, "depth": _count(state, "blocks."),
                    "num_heads": heads, "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                    "norm_eps": 1e-6, "pos_embed": "learned", "mode": "with_mask_token", "init": "timm"},
        "masker": {"name": "block", "ratio": float(aug.get("MASK_RATIO") or 0.4), "min_aspect": 0.3},
        "target": {"name": "hog", "nbins": nbins, "cell": cell, "gaussian_window": 0},
        "decoder": {"name": "linear", "predict": "all"},
        "losses": {"rec": {"name": "masked_mse"}},
    }}


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: a SlowFast MaskFeat file (or its bare ``model_state``), else
    None; a MaskFeat file of an architecture mimkit lacks (MViTv2) raises a ConfigError."""
    state = model_state(obj)
    if state is None:
        return None
    refuse(state)
    if architecture(state)[0] == "MViTv2":
        return recipe_for_mvit(state, slowfast_cfg(obj)), convert_mvit(state), True
    return recipe_for(state, slowfast_cfg(obj)), convert_official(state), True


def _check_sobel(k: str, v: torch.Tensor) -> None:
    sobel = _SOBEL if k.endswith("weight_x") else _SOBEL.t()
    if v.shape[-2:] != (3, 3) or not torch.equal(v.float().reshape(-1, 3, 3)[0], sobel):
        raise ConfigError(f"SlowFast MaskFeat checkpoint: {k} is not the Sobel kernel of HOGLayerC")


def convert_mvit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SlowFast ``MaskMViT`` (video MViTv2) key names -> the ``masked`` model with the
    ``mvit_video`` encoder and the ``linear`` decoder (same names under ``encoder.``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("hogs."):
            if k.endswith(("weight_x", "weight_y")):
                _check_sobel(k, v)
            continue
        if k.startswith("pred_head.transforms.0.0."):
            out["encoder.norm." + k[len("pred_head.transforms.0.0."):]] = v
        elif k.startswith("pred_head.projections.0."):
            out["decoder.head." + k[len("pred_head.projections.0."):]] = v
        elif m := re.match(r"(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$", k):
            if m.group(2) == "q":  # MVIT.SEPARATE_QKV: fuse to one qkv (rows q, k, v)
                parts = [state[f"{m.group(1)}{p}.{m.group(3)}"] for p in "qkv"]
                out[f"encoder.{m.group(1)}qkv.{m.group(3)}"] = torch.cat(parts, 0)
        elif k.startswith(("patch_embed.proj.", "blocks.")) or k in (
                "cls_token", "mask_token", "pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"):
            out["encoder." + k] = v
        else:
            raise ConfigError(f"SlowFast MaskFeat checkpoint: unexpected key {k!r} for a video MViTv2 MaskMViT")
    return out


#: SlowFast's defaults (slowfast/config/defaults.py) of the keys the MViTv2 recipe reads, for a
#: cfg dump that lacks one.
_SF_MVIT = {"EMBED_DIM": 96, "NUM_HEADS": 1, "DEPTH": 16, "MLP_RATIO": 4.0, "QKV_BIAS": True,
            "PATCH_KERNEL": [3, 7, 7], "PATCH_STRIDE": [2, 4, 4], "PATCH_PADDING": [2, 4, 4], "PATCH_2D": False,
            "DIM_MUL": [], "HEAD_MUL": [], "POOL_Q_STRIDE": [], "POOL_KV_STRIDE": [], "POOL_KV_STRIDE_ADAPTIVE": None,
            "POOL_KVQ_KERNEL": None, "DIM_MUL_IN_ATT": False, "CLS_EMBED_ON": True, "USE_ABS_POS": True,
            "SEP_POS_EMBED": False, "REL_POS_SPATIAL": False, "REL_POS_TEMPORAL": False, "REL_POS_ZERO_INIT": False,
            "RESIDUAL_POOLING": False, "MODE": "conv", "POOL_FIRST": False, "NORM": "layernorm", "NORM_STEM": False,
            "LAYER_SCALE_INIT_VALUE": 0.0, "USE_FIXED_SINCOS_POS": False, "DROPPATH_RATE": 0.1}


def _literal(v: Any) -> Any:
    """A cfg value; a string such as "(3, 7, 7)" (how the MViTv2-L config writes its stem) parsed."""
    if isinstance(v, str) and v.strip()[:1] in "([":
        import ast

        try:
            return list(ast.literal_eval(v))
        except (ValueError, SyntaxError):
            return v
    return v


def recipe_for_mvit(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recipe of a video MViTv2 MaskFeat file: the schedule, the input and the mask from
    its ``cfg``; the stem's width and kernel checked against the weights."""
    if not cfg or not isinstance(cfg.get("MVIT"), Mapping):
        raise ConfigError("SlowFast MaskFeat checkpoint: a video MViTv2 state without the file's cfg (MVIT strides, "
                          "heads, pooling schedule are not in the weights): load the .pyth file itself")
    m = {k: _literal(v) for k, v in {**_SF_MVIT, **cfg["MVIT"]}.items()}
    mask, data, aug = cfg.get("MASK") or {}, cfg.get("DATA") or {}, cfg.get("AUG") or {}
    bad = [f"MVIT.{k} {m[k]!r} (mvit_video: {want!r})" for k, want in (
        ("MODE", "conv"), ("POOL_FIRST", False), ("PATCH_2D", False), ("NORM", "layernorm"), ("NORM_STEM", False),
        ("USE_FIXED_SINCOS_POS", False)) if m[k] != want]
    if float(m["LAYER_SCALE_INIT_VALUE"] or 0) > 0:
        bad.append(f"MVIT.LAYER_SCALE_INIT_VALUE {m['LAYER_SCALE_INIT_VALUE']} (layer scale)")
    if (m.get("REV") or {}).get("ENABLE"):
        bad.append("MVIT.REV.ENABLE (a reversible MViT)")
    if mask.get("MAE_ON"):
        bad.append("MASK.MAE_ON (the MAE variant)")
    if str(mask.get("HEAD_TYPE", "separate")) != "separate":
        bad.append(f"MASK.HEAD_TYPE {mask.get('HEAD_TYPE')!r} (mimkit: separate, a linear head)")
    if mask.get("PRED_HOG") is False:
        bad.append("MASK.PRED_HOG False (pixel targets)")
    if aug.get("MASK_TUBE") or aug.get("MASK_FRAMES"):
        bad.append("AUG.MASK_TUBE / MASK_FRAMES (mimkit's cube masker draws the default cube masks)")
    depths = list(mask.get("PRETRAIN_DEPTH") or [15])
    if len(depths) != 1:
        bad.append(f"MASK.PRETRAIN_DEPTH {depths} (one prediction depth)")
    if bad:
        raise ConfigError(f"SlowFast MaskFeat checkpoint: the video MViTv2 file's cfg has {'; '.join(bad)}: "
                          "it cannot be imported")
    w = state["patch_embed.proj.weight"]  # (D0, C, kt, kh, kw)
    kernel = [int(v) for v in w.shape[2:]]
    if int(m["EMBED_DIM"]) != w.shape[0] or [int(v) for v in m["PATCH_KERNEL"]] != kernel:
        raise ConfigError(f"SlowFast MaskFeat checkpoint: cfg MVIT.EMBED_DIM {m['EMBED_DIM']} / PATCH_KERNEL "
                          f"{m['PATCH_KERNEL']} disagree with patch_embed.proj.weight {tuple(w.shape)}")
    chans = int((data.get("INPUT_CHANNEL_NUM") or [3])[0])
    frames, crop = int(data.get("NUM_FRAMES", 8)), int(data.get("TRAIN_CROP_SIZE", 224))
    encoder = {
        "name": "mvit_video", "embed_dim": w.shape[0], "num_heads": int(m["NUM_HEADS"]), "depth": int(m["DEPTH"]),
        "pred_depth": int(depths[0]), "mlp_ratio": float(m["MLP_RATIO"]), "qkv_bias": bool(m["QKV_BIAS"]),
        "patch_kernel": kernel, "patch_stride": [int(v) for v in m["PATCH_STRIDE"]],
        "patch_padding": [int(v) for v in m["PATCH_PADDING"]],
        "dim_mul": [[int(i), float(f)] for i, f in m["DIM_MUL"]],
        "head_mul": [[int(i), float(f)] for i, f in m["HEAD_MUL"]],
        "pool_q_stride": [[int(v) for v in e] for e in m["POOL_Q_STRIDE"]],
        "pool_kvq_kernel": None if m["POOL_KVQ_KERNEL"] is None else [int(v) for v in m["POOL_KVQ_KERNEL"]],
        "pool_kv_stride": [[int(v) for v in e] for e in (m["POOL_KV_STRIDE"] or [])],
        "pool_kv_stride_adaptive": None if m["POOL_KV_STRIDE_ADAPTIVE"] is None else [
            int(v) for v in m["POOL_KV_STRIDE_ADAPTIVE"]],
        "dim_mul_in_att": bool(m["DIM_MUL_IN_ATT"]), "cls_embed": bool(m["CLS_EMBED_ON"]),
        "use_abs_pos": bool(m["USE_ABS_POS"]), "sep_pos_embed": bool(m["SEP_POS_EMBED"]),
        "rel_pos_spatial": bool(m["REL_POS_SPATIAL"]), "rel_pos_temporal": bool(m["REL_POS_TEMPORAL"]),
        "rel_pos_zero_init": bool(m["REL_POS_ZERO_INIT"]), "residual_pooling": bool(m["RESIDUAL_POOLING"]),
        "drop_path": 0.0, "norm_eps": 1e-6, "img_size": crop, "num_frames": frames, "in_chans": chans,
    }
    window = [int(v) for v in (aug.get("MASK_WINDOW_SIZE") or [8, 7, 7])]
    return {"model": {
        "name": "masked", "input_key": "video", "encoder": encoder,
        "masker": {"name": "cube", "ratio": float(aug.get("MASK_RATIO") or 0.4), "window": window},
        "target": {"name": "hog", "nbins": 9, "cell": 8, "gaussian_window": 0, "frames": "first"},
        "decoder": {"name": "linear", "predict": "all"},
        "losses": {"rec": {"name": "masked_mse"}},
    }}
