"""Hugging Face ``ViTMAEForPreTraining`` folders in and out.

* :func:`import_hf` (the ``vit_mae_hf`` importer): a ``{"hf_config": dict, "state": tensors}``
  mapping (what a folder holds: ``config.json`` + ``model.safetensors``) or a bare HF state dict
  -> ``(recipe, state, strict)`` in mimkit's layout.
  ``mimkit.load(folder)`` goes through it; the recipe carries the config's ``layer_norm_eps``
  (encoder ``norm_eps`` and decoder ``norm_eps``: 1e-12 in Hugging Face's own ports).
* :func:`load_hf(folder)`: the same as ``mimkit.load(folder)``, refusing other folders.
* :func:`export_hf(model, folder)` (the ``vit_mae_hf`` exporter, ``mim export RUN --format hf
  OUT``): a folder ``ViTMAEForPreTraining.from_pretrained`` loads offline, giving the same loss
  on the same ``noise`` (``layer_norm_eps`` written: 1e-6 for an MAE trained with mimkit).

Both the transformers 4 key names (``vit.encoder.layer.N.attention.attention.query``) and the 5
names (``vit.layers.N.attention.q_proj``) are read; exports use the installed version's names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mimkit.plugin_api import CheckpointError, ConfigError, Exporter, load, read_hf_folder

_BLOCK = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2.", "attention.o_proj.": "attn.proj.",
          "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}


def canonical(key: str) -> str:
    """transformers 4 and 5 names -> one form (the 5 names)."""
    key = re.sub(r"^vit\.encoder\.layer\.", "vit.layers.", key)
    key = re.sub(r"^videomae\.encoder\.layer\.", "videomae.layers.", key)
    key = re.sub(r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers.", key)  # transformers 5 on disk
    for old, new in (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
                     ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."),
                     ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2.")):
        key = key.replace(old, new)
    return key


def blocks_to_mimkit(state: Mapping[str, torch.Tensor], src: str, dst: str, out: dict, qv_bias: bool = False) -> None:
    """HF transformer layers ``src``N. -> timm blocks ``dst``N. (q/k/v concatenated into qkv)."""
    idx = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(src) + r"(\d+)\.", k))})
    for i in idx:
        s, d = f"{src}{i}.", f"{dst}{i}."
        out[d + "attn.qkv.weight"] = torch.cat([state[s + f"attention.{x}_proj.weight"] for x in "qkv"])
        if qv_bias:
            out[d + "attn.q_bias"] = state[s + "attention.q_proj.bias"]
            out[d + "attn.v_bias"] = state[s + "attention.v_proj.bias"]
        else:
            out[d + "attn.qkv.bias"] = torch.cat([state[s + f"attention.{x}_proj.bias"] for x in "qkv"])
        for a, b in _BLOCK.items():
            for leaf in ("weight", "bias"):
                out[d + b + leaf] = state[s + a + leaf]


def blocks_from_mimkit(state: Mapping[str, torch.Tensor], src: str, dst: str, out: dict, qv_bias: bool = False) -> None:
    """The inverse of :func:`blocks_to_mimkit` (canonical HF names)."""
    idx = sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(src) + r"(\d+)\.", k))})
    for i in idx:
        s, d = f"{src}{i}.", f"{dst}{i}."
        for x, w in zip("qkv", state[s + "attn.qkv.weight"].chunk(3)):
            out[d + f"attention.{x}_proj.weight"] = w
        if qv_bias:
            out[d + "attention.q_proj.bias"] = state[s + "attn.q_bias"]
            out[d + "attention.v_proj.bias"] = state[s + "attn.v_bias"]
        else:
            for x, b in zip("qkv", state[s + "attn.qkv.bias"].chunk(3)):
                out[d + f"attention.{x}_proj.bias"] = b
        for a, b in _BLOCK.items():
            for leaf in ("weight", "bias"):
                out[d + a + leaf] = state[s + b + leaf]


# Hugging Face key -> mimkit key, outside the transformer blocks (read both ways).
_ENCODER = {"vit.embeddings.cls_token": "encoder.vit.cls_token",
            "vit.embeddings.position_embeddings": "encoder.vit.pos_embed",
            "vit.embeddings.patch_embeddings.projection.weight": "encoder.vit.patch_embed.proj.weight",
            "vit.embeddings.patch_embeddings.projection.bias": "encoder.vit.patch_embed.proj.bias",
            "vit.layernorm.weight": "encoder.vit.norm.weight", "vit.layernorm.bias": "encoder.vit.norm.bias"}
_DECODER = {"decoder.mask_token": "decoder.mask_token", "decoder.decoder_pos_embed": "decoder.pos_embed",
            "decoder.decoder_embed.weight": "decoder.embed.weight", "decoder.decoder_embed.bias": "decoder.embed.bias",
            "decoder.decoder_norm.weight": "decoder.norm.weight", "decoder.decoder_norm.bias": "decoder.norm.bias",
            "decoder.decoder_pred.weight": "decoder.pred.weight", "decoder.decoder_pred.bias": "decoder.pred.bias"}


def convert_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViTMAEForPreTraining state dict -> mimkit's MAE keys."""
    st = {canonical(k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {mk: st[hf] for hf, mk in _ENCODER.items()}
    blocks_to_mimkit(st, "vit.layers.", "encoder.vit.blocks.", out)
    if "decoder.decoder_embed.weight" in st:
        out.update({mk: st[hf] for hf, mk in _DECODER.items()})
        blocks_to_mimkit(st, "decoder.decoder_layers.", "decoder.blocks.", out)
    return out


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def recipe_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ViTMAE ``config.json`` -> the mimkit recipe of the same architecture and loss."""
    if cfg.get("model_type", "vit_mae") != "vit_mae":
        raise CheckpointError(f"not a ViTMAE config (model_type {cfg.get('model_type')!r})")
    d, dd = cfg["hidden_size"], cfg["decoder_hidden_size"]
    return {"model": {
        "name": "masked",
        "encoder": {"name": "vit", "model": "vit_base_patch16_224", "img_size": cfg["image_size"],
                    "patch_size": cfg["patch_size"], "in_chans": cfg["num_channels"], "embed_dim": d,
                    "depth": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
                    "mlp_ratio": cfg["intermediate_size"] / d, "pos_embed": "sincos", "mode": "visible_only",
                    "norm_eps": cfg.get("layer_norm_eps", 1e-12)},
        "masker": {"name": "random", "ratio": cfg.get("mask_ratio", 0.75)},
        "target": {"name": "pixels", "norm": "patch" if cfg.get("norm_pix_loss", False) else "none"},
        "decoder": {"name": "mae", "embed_dim": dd, "depth": cfg["decoder_num_hidden_layers"],
                    "num_heads": cfg["decoder_num_attention_heads"], "mlp_ratio": cfg["decoder_intermediate_size"] / dd,
                    "norm_eps": cfg.get("layer_norm_eps", 1e-12)},
        "losses": {"rec": {"name": "masked_mse"}},
    }}


def config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sizes read from a bare HF state dict (heads: the official sizes' counts)."""
    st = {canonical(k): v for k, v in state.items()}
    w = st["vit.embeddings.patch_embeddings.projection.weight"]
    d, n = w.shape[0], st["vit.embeddings.position_embeddings"].shape[1] - 1
    dd = st["decoder.decoder_embed.weight"].shape[0]
    heads = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
    return {"model_type": "vit_mae", "hidden_size": d, "image_size": int(round(n**0.5)) * w.shape[2],
            "patch_size": w.shape[2], "num_channels": w.shape[1], "num_hidden_layers": _count(st, "vit.layers."),
            "num_attention_heads": heads.get(d, max(1, d // 64)), "intermediate_size": st["vit.layers.0.mlp.fc1.weight"].shape[0],
            "decoder_hidden_size": dd, "decoder_num_hidden_layers": _count(st, "decoder.decoder_layers."),
            "decoder_num_attention_heads": 16, "decoder_intermediate_size": st["decoder.decoder_layers.0.mlp.fc1.weight"].shape[0],
            "mask_ratio": 0.75, "norm_pix_loss": False, "layer_norm_eps": 1e-12}


def _is_hf_state(state: Any) -> bool:
    return isinstance(state, Mapping) and "vit.embeddings.patch_embeddings.projection.weight" in state


def import_hf(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: ``{"hf_config": ..., "state": ...}`` or a bare HF state."""
    if isinstance(obj, Mapping) and "hf_config" in obj and "state" in obj:
        cfg, state = obj["hf_config"], obj["state"]
        if cfg.get("model_type") != "vit_mae" or not _is_hf_state(state):
            return None
    elif _is_hf_state(obj):
        state, cfg = obj, config_from_state(obj)
    else:
        return None
    return recipe_from_config(cfg), convert_hf(state), True




def load_hf(folder: str | Path) -> nn.Module:
    """A mimkit MAE model (eval mode) from a ``ViTMAEForPreTraining`` folder: ``mimkit.load``
    (every LayerNorm takes the config's ``layer_norm_eps``: 1e-12 in Hugging Face's own ports,
    1e-6 officially), refusing a folder that is not a ViTMAE one."""
    obj = read_hf_folder(folder)
    if import_hf(obj) is None:
        raise CheckpointError(f"{folder}: not a ViTMAEForPreTraining folder")
    return load(folder)


def _layernorm_eps(model: nn.Module) -> set[float]:
    return {float(m.eps) for part in (model.encoder, model.decoder) for m in part.modules()
            if isinstance(m, nn.LayerNorm)}


def hf_config_for(model: nn.Module) -> dict[str, Any]:
    """The ViTMAE config of a mimkit MAE model (refuses other methods, naming what differs)."""
    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    masker, target = getattr(model, "masker", None), getattr(model, "target", None)
    vit = getattr(enc, "vit", None)
    problems = []
    if vit is None or getattr(enc.config, "mode", None) != "visible_only" or enc.num_prefix_tokens != 1:
        problems.append("encoder: a visible-only `vit` with one [CLS] token")
    if type(masker).__name__ != "RandomMasker":
        problems.append("masker: `random`")
    if dec is None or type(dec).__name__ != "MAEDecoder" or getattr(dec, "predict", "all") != "all":
        problems.append("decoder: `mae` predicting all tokens")
    if target is None or getattr(getattr(target, "config", None), "norm", None) not in ("patch", "none"):
        problems.append("target: `pixels` with norm patch or none")
    losses = getattr(model, "losses", None) or {}
    if [type(x).__name__ for x in losses.values()] != ["MaskedMSE"] or any(
            getattr(x.config, "tokens", "masked") != "masked" or getattr(x.config, "pre_layernorm", False)
            or x.weight != 1.0 for x in losses.values()):
        problems.append("losses: one `masked_mse` on the hidden tokens, weight 1 (ViTMAE computes no other term)")
    if not problems and len(_layernorm_eps(model)) != 1:
        problems.append(f"one LayerNorm eps everywhere (ViTMAE's config has one layer_norm_eps), got {sorted(_layernorm_eps(model))}")
    if problems:
        raise ConfigError("export to ViTMAEForPreTraining needs an MAE model; " + "; ".join(problems))
    blk, dblk = vit.blocks[0], dec.blocks[0]
    return {
        "model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"],
        "hidden_size": enc.embed_dim, "num_hidden_layers": len(vit.blocks), "num_attention_heads": blk.attn.num_heads,
        "intermediate_size": blk.mlp.fc1.out_features, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": _layernorm_eps(model).pop(),
        "image_size": enc.img_size[0], "patch_size": enc.patch[-1], "num_channels": enc.in_chans, "qkv_bias": True,
        "decoder_num_attention_heads": dblk.attn.num_heads, "decoder_hidden_size": dec.embed.out_features,
        "decoder_num_hidden_layers": len(dec.blocks), "decoder_intermediate_size": dblk.mlp.fc1.out_features,
        "mask_ratio": float(masker.config.ratio), "norm_pix_loss": target.config.norm == "patch",
    }


def to_hf_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """mimkit MAE keys -> canonical (transformers 5) ViTMAEForPreTraining keys."""
    st = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {hf: st[mk] for hf, mk in (_ENCODER | _DECODER).items()}
    blocks_from_mimkit(st, "encoder.vit.blocks.", "vit.layers.", out)
    blocks_from_mimkit(st, "decoder.blocks.", "decoder.decoder_layers.", out)
    return out


def save_hf(hf_cls: Any, config: Any, canonical_state: Mapping[str, torch.Tensor], folder: str | Path) -> Path:
    """Build ``hf_cls(config)`` with the installed transformers, load the canonical state under
    that version's key names (every key checked), ``save_pretrained`` into ``folder``."""
    hf = hf_cls(config)
    names = {canonical(k): k for k in hf.state_dict()}
    missing = sorted(set(names) - set(canonical_state))
    extra = sorted(set(canonical_state) - set(names))
    if missing or extra:
        raise CheckpointError(f"Hugging Face export: keys missing {missing[:5]}, unexpected {extra[:5]}")
    hf.load_state_dict({names[k]: v.contiguous() for k, v in canonical_state.items()}, strict=True)
    folder = Path(folder)
    hf.save_pretrained(folder)
    return folder


def export_hf(model: nn.Module, folder: str | Path) -> Path:
    """Write a ``ViTMAEForPreTraining`` folder (needs ``pip install mimkit-mae[hf]``)."""
    try:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ConfigError("exporting to Hugging Face needs transformers: pip install 'mimkit-mae[hf]'") from exc
    return save_hf(ViTMAEForPreTraining, ViTMAEConfig(**hf_config_for(model)), to_hf_state(model), folder)


EXPORTER = Exporter(format="hf", check=hf_config_for, write=export_hf,
                    describes="a transformers ViTMAEForPreTraining folder",
                    load_hint="transformers.ViTMAEForPreTraining.from_pretrained({path}) or mimkit.load({path})")

