"""Import facebookresearch/mae checkpoints (``{"model": state_dict}``, official key names).

Full pretraining checkpoints (encoder + decoder) and encoder-only releases both load; with
an encoder-only file the decoder keeps its initialization (a warning says so).
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import torch

#: Heads per width for the official ViT sizes (heads are not recoverable from weights).
_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_DECODER = {"decoder_embed.": "decoder.embed.", "decoder_norm.": "decoder.norm.", "decoder_pred.": "decoder.pred.",
            "decoder_blocks.": "decoder.blocks."}


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names -> mimkit's (``encoder.vit.*`` keeps timm's names)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == "mask_token":
            out["decoder.mask_token"] = v
        elif k == "decoder_pos_embed":
            out["decoder.pos_embed"] = v
        elif any(k.startswith(src) for src in _DECODER):
            src = next(s for s in _DECODER if k.startswith(s))
            out[_DECODER[src] + k[len(src):]] = v
        elif k.startswith(("head.", "fc_norm.")):
            continue  # fine-tuned classifier parts are not part of pretraining
        else:
            out["encoder.vit." + k] = v
    return out


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def recipe_for(state: Mapping[str, torch.Tensor], norm_pix: bool = True) -> dict[str, Any]:
    """The recipe of the architecture a state dict describes (sizes read from the weights)."""
    w = state["patch_embed.proj.weight"]  # (D, C, p, p)
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n = state["pos_embed"].shape[1] - 1
    side = int(round(n**0.5))
    depth = _count(state, "blocks.")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    model: dict[str, Any] = {
        "name": "masked",
        "encoder": {"name": "vit", "model": "vit_base_patch16_224", "img_size": side * patch, "patch_size": patch,
                    "in_chans": chans, "embed_dim": dim, "depth": depth, "num_heads": _HEADS.get(dim, max(1, dim // 64)),
                    "mlp_ratio": mlp_ratio, "pos_embed": "sincos", "mode": "visible_only"},
        "masker": {"name": "random", "ratio": 0.75},
        "target": {"name": "pixels", "norm": "patch" if norm_pix else "none"},
        "losses": {"rec": {"name": "masked_mse"}},
    }
    if "decoder_embed.weight" in state:
        ddim = state["decoder_embed.weight"].shape[0]
        model["decoder"] = {"name": "mae", "embed_dim": ddim, "depth": _count(state, "decoder_blocks."),
                            "num_heads": 16, "mlp_ratio": state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / ddim}
    else:
        model["decoder"] = {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16}
    return {"model": model}


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: recognizes an official MAE file, else returns None."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model", obj)
    if not isinstance(state, Mapping) or "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        return None
    if any(k.startswith(("encoder.", "cls_head.", "pred_head.")) for k in state):
        return None  # mimkit's own layout, a SupMAE file (mimkit-supmae), SlowFast MaskFeat (mimkit-maskfeat)
    recipe = recipe_for(state)
    full = "decoder_embed.weight" in state
    if not full:
        warnings.warn("encoder-only MAE checkpoint: the decoder keeps its random initialization", stacklevel=2)
    return recipe, convert_official(state), full
