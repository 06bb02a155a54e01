"""Hugging Face ``VideoMAEForPreTraining`` folders in and out.

* :func:`import_hf` (the ``videomae_hf`` importer): ``{"hf_config": dict, "state": tensors}``
  (a folder's ``config.json`` + weights) -> ``(recipe, state, strict)``.
  ``mimkit.load(folder)`` goes through it: the recipe carries ``layer_norm_eps`` and, for the
  decoder's last LayerNorm, the 1e-5 that Hugging Face hard-codes there (``final_norm_eps``), so
  the loaded model computes what transformers computes.
* :func:`load_hf(folder, decoder_norm_eps)`: ``mimkit.load`` with a choice of that last eps
  (None: the config's, the official 1e-6 for an official-equivalent model).
* :func:`export_hf(model, folder)` (the ``videomae_hf`` exporter, ``mim export RUN --format hf
  OUT``): a folder ``VideoMAEForPreTraining.from_pretrained`` loads offline (``layer_norm_eps``
  written, ``use_mean_pooling: false`` so the encoder keeps its final norm). Hugging Face's
  decoder hard-codes eps 1e-5 in its last LayerNorm where the official code and mimkit use
  1e-6: on the same ``bool_masked_pos`` the exported model's predictions move by about 1e-5
  and its loss by about 1e-6 (tested bounds: 1e-4 and 1e-5).
  Inputs: HF takes (B, T, C, H, W), mimkit (B, C, T, H, W).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mimkit.plugin_api import CheckpointError, ConfigError, Exporter, load, read_hf_folder

#: transformers' VideoMAEDecoder builds its last norm as ``nn.LayerNorm(decoder_hidden_size)``
HF_DECODER_NORM_EPS = 1e-5

_BLOCK = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2.", "attention.o_proj.": "attn.proj.",
          "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}


# Hugging Face key -> mimkit key, outside the transformer blocks (read both ways).
_TOP = {"videomae.embeddings.patch_embeddings.projection.weight": "encoder.patch_embed.weight",
        "videomae.embeddings.patch_embeddings.projection.bias": "encoder.patch_embed.bias",
        "videomae.layernorm.weight": "encoder.norm.weight", "videomae.layernorm.bias": "encoder.norm.bias",
        "encoder_to_decoder.weight": "decoder.embed.weight", "mask_token": "decoder.mask_token",
        "decoder.norm.weight": "decoder.norm.weight", "decoder.norm.bias": "decoder.norm.bias",
        "decoder.head.weight": "decoder.head.weight", "decoder.head.bias": "decoder.head.bias"}


def canonical(key: str) -> str:
    """transformers 4 and 5 names (in memory and on disk) -> one form."""
    key = re.sub(r"^videomae\.encoder\.layer\.", "videomae.layers.", key)
    key = re.sub(r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers.", key)
    for old, new in (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
                     ("attention.attention.value.", "attention.v_proj."), ("attention.attention.q_bias", "attention.q_proj.bias"),
                     ("attention.attention.v_bias", "attention.v_proj.bias"), ("attention.output.dense.", "attention.o_proj."),
                     ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2.")):
        key = key.replace(old, new)
    return key


def _layers(state: Mapping[str, Any], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def _to_mimkit_blocks(st: Mapping[str, torch.Tensor], src: str, dst: str, out: dict) -> None:
    for i in _layers(st, src):
        s, d = f"{src}{i}.", f"{dst}{i}."
        out[d + "attn.qkv.weight"] = torch.cat([st[s + f"attention.{x}_proj.weight"] for x in "qkv"])
        out[d + "attn.q_bias"] = st[s + "attention.q_proj.bias"]
        out[d + "attn.v_bias"] = st[s + "attention.v_proj.bias"]
        for a, b in _BLOCK.items():
            for leaf in ("weight", "bias"):
                out[d + b + leaf] = st[s + a + leaf]


def _from_mimkit_blocks(st: Mapping[str, torch.Tensor], src: str, dst: str, out: dict) -> None:
    for i in _layers(st, src):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for x, w in zip("qkv", st[s + "attn.qkv.weight"].chunk(3)):
            out[d + f"attention.{x}_proj.weight"] = w
        out[d + "attention.q_proj.bias"] = st[s + "attn.q_bias"]
        out[d + "attention.v_proj.bias"] = st[s + "attn.v_bias"]
        for a, b in _BLOCK.items():
            for leaf in ("weight", "bias"):
                out[d + a + leaf] = st[s + b + leaf]


def convert_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VideoMAEForPreTraining state dict -> mimkit's keys."""
    st = {canonical(k): v for k, v in state.items()}
    if "videomae.layernorm.weight" not in st:
        raise CheckpointError("VideoMAE folder without the encoder's final norm (use_mean_pooling: true, a "
                              "fine-tuning layout): mimkit's pretraining encoder ends with a LayerNorm")
    out = {mk: st[hf] for hf, mk in _TOP.items()}
    _to_mimkit_blocks(st, "videomae.layers.", "encoder.blocks.", out)
    _to_mimkit_blocks(st, "decoder.decoder_layers.", "decoder.blocks.", out)
    return out


def recipe_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    d, dd = cfg["hidden_size"], cfg["decoder_hidden_size"]
    if not cfg.get("qv_bias", True):
        raise CheckpointError("VideoMAE config with qv_bias: false is not supported (mimkit's video_vit: q/v biases)")
    target = {"name": "video_pixels", "norm": "patch_channel" if cfg.get("norm_pix_loss", True) else "none",
              "unbiased": True, "eps": 1.0e-6, "eps_inside_sqrt": False,
              "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225]}
    return {"model": {
        "name": "masked", "input_key": "video",
        "encoder": {"name": "video_vit", "size": None, "embed_dim": d, "depth": cfg["num_hidden_layers"],
                    "num_heads": cfg["num_attention_heads"], "mlp_ratio": cfg["intermediate_size"] / d,
                    "img_size": cfg["image_size"], "num_frames": cfg["num_frames"], "tubelet_size": cfg["tubelet_size"],
                    "patch_size": cfg["patch_size"], "in_chans": cfg["num_channels"], "qkv_bias": "qv",
                    "norm_eps": cfg.get("layer_norm_eps", 1e-12)},
        "masker": {"name": "tube", "ratio": 0.9},
        "target": target,
        "decoder": {"name": "videomae", "embed_dim": dd, "depth": cfg["decoder_num_hidden_layers"],
                    "num_heads": cfg["decoder_num_attention_heads"], "mlp_ratio": cfg["decoder_intermediate_size"] / dd,
                    "qkv_bias": "qv", "norm_eps": cfg.get("layer_norm_eps", 1e-12), "predict": "masked",
                    "final_norm_eps": HF_DECODER_NORM_EPS},
        "losses": {"rec": {"name": "masked_mse"}},
    }}


def import_hf(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry for ``{"hf_config": ..., "state": ...}`` VideoMAE folders."""
    if not (isinstance(obj, Mapping) and "hf_config" in obj and "state" in obj):
        return None
    if obj["hf_config"].get("model_type") != "videomae":
        return None
    return recipe_from_config(obj["hf_config"]), convert_hf(obj["state"]), True




def load_hf(folder: str | Path, decoder_norm_eps: float | None = HF_DECODER_NORM_EPS) -> nn.Module:
    """A mimkit VideoMAE (eval mode) from a ``VideoMAEForPreTraining`` folder (``mimkit.load``).
    The decoder's final LayerNorm takes ``decoder_norm_eps`` (1e-5: what Hugging Face computes
    with; None keeps the config's eps, the official 1e-6 for an official-equivalent model)."""
    obj = read_hf_folder(folder)
    if import_hf(obj) is None:
        raise CheckpointError(f"{folder}: not a VideoMAEForPreTraining folder")
    eps = obj["hf_config"].get("layer_norm_eps", 1e-12) if decoder_norm_eps is None else decoder_norm_eps
    return load(folder, overrides=[f"model.decoder.final_norm_eps={eps!r}"])


def hf_config_for(model: nn.Module) -> dict[str, Any]:
    enc, dec, target = getattr(model, "encoder", None), getattr(model, "decoder", None), getattr(model, "target", None)
    problems = []
    if type(enc).__name__ != "VideoViTEncoder" or enc.config.qkv_bias != "qv":
        problems.append("encoder: `video_vit` with qkv_bias qv")
    if type(dec).__name__ != "VideoMAEDecoder" or dec.predict != "masked" or dec.config.qkv_bias != "qv":
        problems.append("decoder: `videomae` predicting the masked tokens, qkv_bias qv")
    tc = getattr(target, "config", None)
    if tc is None or getattr(tc, "norm", None) not in ("patch_channel", "none") or (
            list(getattr(tc, "input_mean", []) or []) != [0.485, 0.456, 0.406]):
        problems.append("target: `pixels` with norm patch_channel (or none) after undoing ImageNet normalization")
    losses = getattr(model, "losses", None) or {}
    if [type(x).__name__ for x in losses.values()] != ["MaskedMSE"] or any(
            getattr(x.config, "pre_layernorm", False) or x.weight != 1.0 for x in losses.values()):
        problems.append("losses: one `masked_mse`, weight 1 (VideoMAE computes no other term)")
    if not problems:
        # the decoder's last norm aside: transformers builds it with eps 1e-5 whatever the config says
        eps = {float(m.eps) for part in (enc, dec) for m in part.modules()
               if isinstance(m, nn.LayerNorm) and m is not dec.norm}
        if len(eps) != 1:
            problems.append(f"one LayerNorm eps in the blocks (the config has one layer_norm_eps), got {sorted(eps)}")
    if problems:
        raise ConfigError("export to VideoMAEForPreTraining needs a VideoMAE model; " + "; ".join(problems))
    blk, dblk = enc.blocks[0], dec.blocks[0]
    return {
        "model_type": "videomae", "architectures": ["VideoMAEForPreTraining"],
        "image_size": enc.img_size[0], "patch_size": enc.patch[-1], "num_channels": enc.in_chans,
        "num_frames": enc.num_frames, "tubelet_size": enc.patch[0], "hidden_size": enc.embed_dim,
        "num_hidden_layers": len(enc.blocks), "num_attention_heads": blk.attn.num_heads,
        "intermediate_size": blk.mlp.fc1.out_features, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": float(blk.norm1.eps),
        "qv_bias": True, "use_mean_pooling": False, "decoder_num_attention_heads": dblk.attn.num_heads,
        "decoder_hidden_size": dec.embed.out_features, "decoder_num_hidden_layers": len(dec.blocks),
        "decoder_intermediate_size": dblk.mlp.fc1.out_features, "norm_pix_loss": tc.norm == "patch_channel",
    }


def to_hf_state(model: nn.Module) -> dict[str, torch.Tensor]:
    st = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {hf: st[mk] for hf, mk in _TOP.items()}
    _from_mimkit_blocks(st, "encoder.blocks.", "videomae.layers.", out)
    _from_mimkit_blocks(st, "decoder.blocks.", "decoder.decoder_layers.", out)
    return out


def export_hf(model: nn.Module, folder: str | Path) -> Path:
    """Write a ``VideoMAEForPreTraining`` folder (needs ``pip install mimkit-videomae[hf]``)."""
    try:
        from transformers import VideoMAEConfig, VideoMAEForPreTraining
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ConfigError("exporting to Hugging Face needs transformers: pip install 'mimkit-videomae[hf]'") from exc
    hf = VideoMAEForPreTraining(VideoMAEConfig(**hf_config_for(model)))
    names = {canonical(k): k for k in hf.state_dict()}
    state = to_hf_state(model)
    missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or extra:
        raise CheckpointError(f"Hugging Face export: keys missing {missing[:5]}, unexpected {extra[:5]}")
    hf.load_state_dict({names[k]: v.contiguous() for k, v in state.items()}, strict=True)
    folder = Path(folder)
    hf.save_pretrained(folder)
    return folder


EXPORTER = Exporter(format="hf", check=hf_config_for, write=export_hf,
                    describes="a transformers VideoMAEForPreTraining folder",
                    load_hint="transformers.VideoMAEForPreTraining.from_pretrained({path}) or mimkit.load({path})")

