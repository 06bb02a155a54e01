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

The MViTv2 video files (pooling attention, relative positions, stage-wise widths) have no
mimkit encoder: loading one raises a ``ConfigError`` that names what was found.
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


def architecture(state: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(the architecture a SlowFast state describes, the reasons it cannot be imported; [] = it can)."""
    found = [what for pat, what in _MVIT_MARKS.items() if any(re.search(pat, k) for k in state)]
    w = state.get("patch_embed.proj.weight")
    if found:
        return "MViTv2", found
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
    extra = (" mimkit has no MViTv2 encoder: its MaskFeat (mimkit-maskfeat) runs a plain ViT for images and "
             "video. SlowFast's image MaskFeat files (in1k_VIT_B/L_MaskFeat_PT_epoch_01600.pyth) import; "
             "the Kinetics-400 MViTv2-S/L ones do not.") if arch == "MViTv2" else ""
    raise ConfigError(f"SlowFast checkpoint (model_state): found a {arch} ({_count(state, 'blocks.')} blocks{shape}) "
                      f"with {'; '.join(why)}: it cannot be imported.{extra}")


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SlowFast ``MaskMViT`` (ViT configuration) key names -> mimkit's ``masked`` model
    (``maskfeat_vit`` encoder + ``linear`` decoder). Accepts the file or its ``model_state``."""
    state = model_state(state) or state
    refuse(state)
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
    return recipe_for(state, slowfast_cfg(obj)), convert_official(state), True
