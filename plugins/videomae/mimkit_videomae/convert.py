"""Import MCG-NJU/VideoMAE pretraining checkpoints (``{"model": state_dict}``, official names).

Official layout (``modeling_pretrain.py`` ``PretrainVisionTransformer``)::

    encoder.patch_embed.proj.{weight,bias}          Conv3d cube embedding
    encoder.blocks.N.{norm1,norm2}.*, attn.qkv.weight, attn.q_bias, attn.v_bias, attn.proj.*, mlp.fc{1,2}.*
    encoder.norm.*
    encoder_to_decoder.weight                        bias-free
    mask_token                                       (1, 1, d)
    decoder.blocks.N.*, decoder.norm.*, decoder.head.*

The sinusoid position tables are not stored (plain tensors), so neither the number of frames
nor the image size can be read from the file: the recipe assumes the official pretraining input
(16 frames of 224x224); pass overrides (``model.encoder.num_frames=...``) for other inputs.
Heads cannot be read from weights either: the official sizes' head counts are used.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from mimkit.plugin_api import CheckpointError

#: Heads per width of the official encoders and decoders (``pretrain_videomae_*_patch16_224``).
ENCODER_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def is_official(state: Mapping[str, Any]) -> bool:
    return isinstance(state, Mapping) and "encoder.patch_embed.proj.weight" in state and "encoder_to_decoder.weight" in state


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official VideoMAE pretraining key names -> mimkit's (``encoder.*``, ``decoder.*``).

    Accepts the bare state dict or the ``{"model": ...}`` file. Learnable position tables
    (``use_learnable_pos_emb``) are refused: mimkit's encoder has the fixed sinusoid only.
    """
    state = state.get("model", state) if "model" in state and isinstance(state.get("model"), Mapping) else state
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in ("encoder.pos_embed", "pos_embed"):
            raise CheckpointError("VideoMAE checkpoint with a learnable position table: not supported "
                                  "(mimkit's video_vit uses the fixed sinusoid table)")
        if k == "encoder.patch_embed.proj.weight":
            out["encoder.patch_embed.weight"] = v
        elif k == "encoder.patch_embed.proj.bias":
            out["encoder.patch_embed.bias"] = v
        elif k == "encoder_to_decoder.weight":
            out["decoder.embed.weight"] = v
        elif k == "mask_token":
            out["decoder.mask_token"] = v
        elif k.startswith("encoder.head.") or k.startswith("decoder.pos_embed"):
            continue  # identity heads / plain tensors
        elif k.startswith(("encoder.", "decoder.")):
            out[k] = v
        else:
            raise CheckpointError(f"unexpected key {k!r} in a VideoMAE pretraining checkpoint")
    return out


def recipe_for(state: Mapping[str, torch.Tensor], num_frames: int = 16, img_size: int = 224) -> dict[str, Any]:
    """The recipe of the architecture an official state dict describes (sizes from the weights;
    frames and image size are the official pretraining input)."""
    w = state["encoder.patch_embed.proj.weight"]  # (D, C, pt, p, p)
    dim, chans, pt, p = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    ddim = state["encoder_to_decoder.weight"].shape[0]
    out_dim = state["decoder.head.weight"].shape[0]
    if out_dim != pt * p * p * chans:
        raise CheckpointError(f"VideoMAE decoder head predicts {out_dim} values, not a {pt}x{p}x{p}x{chans} cube")
    return {"model": {
        "name": "masked",
        "input_key": "video",
        "encoder": {"name": "video_vit", "size": None, "embed_dim": dim, "depth": _count(state, "encoder.blocks."),
                    "num_heads": ENCODER_HEADS.get(dim, max(1, dim // 64)),
                    "mlp_ratio": state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / dim,
                    "img_size": img_size, "num_frames": num_frames, "tubelet_size": pt, "patch_size": p,
                    "in_chans": chans, "qkv_bias": "qv", "norm_eps": 1e-6},
        "masker": {"name": "tube", "ratio": 0.9},
        "target": {"name": "video_pixels", "norm": "patch_channel", "unbiased": True, "eps": 1.0e-6,
                   "eps_inside_sqrt": False, "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225]},
        "decoder": {"name": "videomae", "embed_dim": ddim, "depth": _count(state, "decoder.blocks."),
                    "num_heads": DECODER_HEADS.get(ddim, max(1, ddim // 64)),
                    "mlp_ratio": state["decoder.blocks.0.mlp.fc1.weight"].shape[0] / ddim, "qkv_bias": "qv",
                    "norm_eps": 1e-6, "predict": "masked"},
        "losses": {"rec": {"name": "masked_mse"}},
    }}


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: an official VideoMAE pretraining file, else None."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model", obj)
    if not is_official(state):
        return None
    return recipe_for(state), convert_official(state), True
