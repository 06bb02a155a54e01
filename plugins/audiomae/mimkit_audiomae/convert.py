"""Import facebookresearch/AudioMAE pretraining checkpoints (``{"model": state_dict}``).

Official key names -> mimkit's: encoder under ``encoder.vit.`` (timm names, unchanged),
``decoder_embed/decoder_blocks/decoder_norm/decoder_pred/mask_token`` under ``decoder.``.
The fixed ``decoder_pos_embed`` is not stored (it is rebuilt); the importer reads which table
kind (official swapped, or correct) the file's ``pos_embed`` holds. Both decoder modes load:
mode 1 files have ``decoder_blocks.*.attn.tau``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .encoder import audio_pos_table

_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_DECODER = {"decoder_embed.": "decoder.embed.", "decoder_norm.": "decoder.norm.", "decoder_pred.": "decoder.pred.",
            "decoder_blocks.": "decoder.blocks."}


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Audio-MAE key names -> mimkit's."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k == "mask_token":
            out["decoder.mask_token"] = v
        elif k == "decoder_pos_embed":
            continue  # fixed sin-cos, rebuilt by the decoder
        elif any(k.startswith(s) for s in _DECODER):
            src = next(s for s in _DECODER if k.startswith(s))
            out[_DECODER[src] + k[len(src):]] = v
        elif k.startswith(("head.", "fc_norm.")):
            continue
        else:
            out["encoder.vit." + k] = v
    return out


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def table_errors(pos_embed: torch.Tensor, grid_t: int, grid_f: int) -> dict[str, float]:
    """Max distance of a (1, 1+N, D) position embedding to the official and the correct table."""
    d = pos_embed.shape[-1]
    if d % 4 or pos_embed.shape[1] != 1 + grid_t * grid_f:
        return {"official": float("inf"), "correct": float("inf")}
    return {k: float((pos_embed[0].float() - audio_pos_table(d, grid_t, grid_f, k)).abs().max()) for k in ("official", "correct")}


def table_kind(pos_embed: torch.Tensor, grid_t: int, grid_f: int) -> str:
    """Which sin-cos table a (1, 1+N, D) position embedding is: "official" or "correct"."""
    errs = table_errors(pos_embed, grid_t, grid_f)
    return min(errs, key=errs.get)


def recipe_for(state: Mapping[str, torch.Tensor], num_mel_bins: int = 128) -> dict[str, Any]:
    """The architecture a state dict describes (the mel axis is assumed to have ``num_mel_bins``)."""
    w = state["patch_embed.proj.weight"]  # (D, 1, p, p)
    dim, patch = w.shape[0], w.shape[2]
    n = state["pos_embed"].shape[1] - 1
    gf = num_mel_bins // patch
    gt = n // gf
    kind = table_kind(state["pos_embed"], gt, gf)
    encoder = {"name": "audio_vit", "model": "vit_base_patch16_224", "img_size": [gt * patch, gf * patch],
               "patch_size": patch, "in_chans": 1, "embed_dim": dim, "depth": _count(state, "blocks."),
               "num_heads": _HEADS.get(dim, max(1, dim // 64)),
               "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim, "pos_table": kind}
    ddim = state["decoder_embed.weight"].shape[0]
    local = "decoder_blocks.0.attn.tau" in state
    decoder = {"name": "audiomae", "mode": "local" if local else "global", "embed_dim": ddim,
               "depth": _count(state, "decoder_blocks."),
               "num_heads": state["decoder_blocks.0.attn.tau"].shape[0] if local else 16,
               "mlp_ratio": state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / ddim}
    model = {"name": "masked", "input_key": "audio", "encoder": encoder, "masker": {"name": "random", "ratio": 0.8},
             "target": {"name": "fbank_patches", "norm_pix": True}, "decoder": decoder,
             "losses": {"rec": {"name": "masked_mse"}}}
    return {"model": model, "data": {"name": "audio_folder", "root": "audio", "target_length": gt * patch,
                                     "num_mel_bins": gf * patch}}


def is_official_audiomae(state: Any, num_mel_bins: int = 128) -> bool:
    """A 1-channel MAE-layout file with a decoder whose fixed position table is an Audio-MAE
    table (official or correct) for a (T', 128 / patch) grid."""
    if not isinstance(state, Mapping) or "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        return False
    w = state["patch_embed.proj.weight"]
    if not (getattr(w, "ndim", 0) == 4 and w.shape[1] == 1 and "decoder_embed.weight" in state
            and not any(k.startswith("encoder.") for k in state)):
        return False
    gf = num_mel_bins // w.shape[2]
    n = state["pos_embed"].shape[1] - 1
    if gf == 0 or n % gf:
        return False
    return min(table_errors(state["pos_embed"], n // gf, gf).values()) < 1e-3


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: an official Audio-MAE pretraining file, else None."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model", obj)
    if not is_official_audiomae(state):
        return None
    return recipe_for(state), convert_official(state), True
