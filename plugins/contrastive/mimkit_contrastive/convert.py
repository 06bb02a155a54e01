"""Import ZhichengHuang/CMAE checkpoints (mmengine layout, mmcv/mmcls module names).

The layout is read from the code that writes the files; no released file was opened (no
downloads here):

* ``mmengine`` ``Runner.save_checkpoint`` writes ``{"meta", "state_dict", "message_hub",
  "optimizer", "param_schedulers"}``; ``state_dict`` is the unwrapped model's state dict.
* The model is ``cmae/models/algorithms/cmae.py`` ``CMAE``: ``backbone`` (online ``CMAEViT``),
  ``target_backbone`` (momentum ``CMAEViT``, built with ``final_norm=False`` in every shipped
  config, so it has no ``ln1``), ``pixel_decoder`` and ``feature_decoder``
  (``necks/mae_neck.py`` ``MAEPretrainDecoder``), ``projector`` and ``target_projector``
  (``necks/nonlinear_neck.py`` ``NonLinearNeck``) and ``head`` (``heads/cmae_head.py``
  ``CMAEPretrainHead``, whose only weights are its ``predictor``, another ``NonLinearNeck``).
* ``CMAEViT`` subclasses the repo's ``backbones/vision_transformer.py`` ``VisionTransformer``
  (the mmcls one): ``cls_token``, ``pos_embed`` (the fixed sin-cos table, a Parameter, so
  stored), ``patch_embed.projection`` (mmcv ``PatchEmbed``), ``layers.N`` of
  ``backbones/transformer_utils.py`` ``TransformerEncoderLayer`` (``ln1``, ``attn.qkv`` with
  bias, ``attn.proj``, ``ln2``, mmcv ``FFN`` ``ffn.layers.0.0`` / ``ffn.layers.1``; mmcv names a
  LayerNorm built with ``postfix=1`` ``ln1``), then the final norm ``ln1``. Every LayerNorm has
  eps 1e-6 (``norm_cfg`` default), as mimkit's timm blocks.
* ``MAEPretrainDecoder``: ``decoder_embed``, ``mask_token``, ``decoder_pos_embed`` (stored),
  ``decoder_blocks.N`` (the same layer class), ``ln1`` (its final norm), ``decoder_pred``.
* ``NonLinearNeck`` (``num_layers=2, with_bias=True, with_last_bn=False``): ``fc0`` (biased),
  ``bn0`` (SyncBN, eps 1e-6), ReLU, ``fc1`` without bias.
* ``tools/extract_backbone_weights.py`` writes the backbone-only file
  ``{"state_dict": {key without "backbone.": ...}, "author": "CMAE"}`` used for fine-tuning.
* mmengine's ``MessageHub.state_dict`` keeps ``HistoryBuffer`` objects (numpy histories): the
  plugin registers stand-ins for them (:data:`PICKLED`, hook ``mimkit_pickled``), so
  ``mimkit.load`` reads a raw training checkpoint with those objects turned into inert attribute bags.

Heads are not recoverable from weights: the encoder's come from the mmcls arch table
(``VisionTransformer.arch_zoo``, matched on width, depth and MLP width), the decoders' are the
configs' 16. Pass overrides (``model.encoder.num_heads=...``) for other sizes.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mimkit.plugin_api import build, CheckpointError, load_state

#: mmcls VisionTransformer.arch_zoo of the CMAE repo: (width, depth, MLP width) -> heads.
ARCH_HEADS = {(768, 8, 2304): 8, (768, 12, 3072): 12, (1024, 24, 4096): 16}
#: Heads per width when the arch table does not match (timm / MAE sizes).
WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
#: The decoders' heads in every shipped config (``decoder_num_heads=16``).
DECODER_HEADS = 16
#: What the config sets and the weights cannot tell.
MASK_RATIO, TEMPERATURE, MOMENTUM = 0.65, 0.07, 0.996

#: mmcls/mmcv block names -> timm's (shared by the ViT layers and the decoder blocks).
_BLOCK = {"ln1.": "norm1.", "ln2.": "norm2.", "attn.qkv.": "attn.qkv.", "attn.proj.": "attn.proj.",
          "ffn.layers.0.0.": "mlp.fc1.", "ffn.layers.1.": "mlp.fc2."}
_BLOCK_LEAVES = ("weight", "bias")
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: Official module prefix of the full checkpoint -> mimkit module prefix.
PARTS = {"backbone.": "encoder.vit.", "target_backbone.": "teacher.copies.encoder.vit.",
         "pixel_decoder.": "decoder.", "feature_decoder.": "feature_decoder.",
         "projector.": "projector.", "target_projector.": "teacher.copies.projector.",
         "head.predictor.": "predictor."}
#: Module names only CMAE has (``head.predictor`` is also mmselfsup MoCo v3's: not a marker).
_MARKERS = ("target_backbone.", "pixel_decoder.", "feature_decoder.", "target_projector.")


def _bad(key: str, where: str, why: str = "unexpected key") -> CheckpointError:
    return CheckpointError(f"CMAE checkpoint ({where}): {why} {key!r}")


def _block_key(rest: str, key: str, where: str) -> str:
    for src, dst in _BLOCK.items():
        if rest.startswith(src) and rest[len(src):] in _BLOCK_LEAVES:
            return dst + rest[len(src):]
    raise _bad(key, where, "unexpected key (not a TransformerEncoderLayer weight of qkv_bias=True, "
                           "init_values=0)")


def _vit_key(rel: str, key: str, where: str) -> str:
    """A ``CMAEViT`` key (prefix removed) -> timm's ``VisionTransformer`` key."""
    if rel in ("cls_token", "pos_embed"):
        return rel
    if rel in ("patch_embed.projection.weight", "patch_embed.projection.bias"):
        return "patch_embed.proj." + rel.rsplit(".", 1)[1]
    if rel in ("ln1.weight", "ln1.bias"):
        return "norm." + rel.rsplit(".", 1)[1]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", rel)
    if m:
        return f"blocks.{m.group(1)}." + _block_key(m.group(2), key, where)
    raise _bad(key, where)


def _decoder_key(rel: str, key: str, where: str) -> str:
    """A ``MAEPretrainDecoder`` key -> mimkit-mae's ``MAEDecoder`` key."""
    fixed = {"mask_token": "mask_token", "decoder_pos_embed": "pos_embed"}
    if rel in fixed:
        return fixed[rel]
    for src, dst in (("decoder_embed.", "embed."), ("ln1.", "norm."), ("decoder_pred.", "pred.")):
        if rel.startswith(src) and rel[len(src):] in _BLOCK_LEAVES:
            return dst + rel[len(src):]
    m = re.fullmatch(r"decoder_blocks\.(\d+)\.(.+)", rel)
    if m:
        return f"blocks.{m.group(1)}." + _block_key(m.group(2), key, where)
    raise _bad(key, where)


def _neck_key(rel: str, key: str, where: str) -> str:
    """A ``NonLinearNeck`` key (``fcI``/``bnI``) -> mimkit's ``MLP`` key (``net.3I``/``net.3I+1``)."""
    m = re.fullmatch(r"(fc|bn)(\d+)\.(\w+)", rel)
    if m and m.group(3) in (_BLOCK_LEAVES if m.group(1) == "fc" else _BN_LEAVES):
        i = int(m.group(2))
        return f"net.{3 * i + (m.group(1) == 'bn')}.{m.group(3)}"
    raise _bad(key, where)


_CONVERT = {"backbone.": _vit_key, "target_backbone.": _vit_key, "pixel_decoder.": _decoder_key,
            "feature_decoder.": _decoder_key, "projector.": _neck_key, "target_projector.": _neck_key,
            "head.predictor.": _neck_key}


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _count_fc(state: Mapping[str, Any], prefix: str) -> int:
    return len({k for k in state if re.match(re.escape(prefix) + r"fc\d+\.weight$", k)})


def state_of(obj: Any) -> Mapping[str, Any] | None:
    """The model state of a loaded file: ``obj["state_dict"]`` (mmengine), else ``obj`` itself."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("state_dict", obj)
    return state if isinstance(state, Mapping) else None


def is_full(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a whole CMAE model (``backbone.*`` + a CMAE-only module)."""
    return "backbone.patch_embed.projection.weight" in state and any(k.startswith(_MARKERS) for k in state)


def is_backbone(obj: Any) -> bool:
    """Whether a loaded file is ``tools/extract_backbone_weights.py``'s output (author CMAE)."""
    state = state_of(obj)
    return (isinstance(obj, Mapping) and obj.get("author") == "CMAE" and state is not None
            and "patch_embed.projection.weight" in state)


def _expected(state: Mapping[str, Any], full: bool) -> list[str]:
    """Every official key the file must hold, given the depths and options it shows."""
    def vit(p: str, final_norm: bool) -> list[str]:
        keys = [p + "cls_token", p + "pos_embed", p + "patch_embed.projection.weight", p + "patch_embed.projection.bias"]
        keys += [f"{p}layers.{i}.{b}{leaf}" for i in range(_count(state, p + "layers.")) for b in _BLOCK
                 for leaf in _BLOCK_LEAVES]
        return keys + ([p + "ln1.weight", p + "ln1.bias"] if final_norm else [])

    if not full:
        return vit("", True)

    def decoder(p: str) -> list[str]:
        keys = [p + "mask_token", p + "decoder_pos_embed"]
        keys += [p + s + leaf for s in ("decoder_embed.", "ln1.", "decoder_pred.") for leaf in _BLOCK_LEAVES]
        return keys + [f"{p}decoder_blocks.{i}.{b}{leaf}" for i in range(max(1, _count(state, p + "decoder_blocks.")))
                       for b in _BLOCK for leaf in _BLOCK_LEAVES]

    def neck(p: str) -> list[str]:
        n = max(2, _count_fc(state, p))
        keys = [f"{p}fc{i}.{leaf}" for i in range(n - 1) for leaf in _BLOCK_LEAVES]
        keys += [f"{p}bn{i}.{leaf}" for i in range(n - 1) for leaf in _BN_LEAVES]
        return keys + [f"{p}fc{n - 1}.weight"]

    keys = vit("backbone.", True) + vit("target_backbone.", "target_backbone.ln1.weight" in state)
    keys += decoder("pixel_decoder.") + decoder("feature_decoder.")
    return keys + neck("projector.") + neck("target_projector.") + neck("head.predictor.")


def check(state: Mapping[str, Any], full: bool | None = None) -> None:
    """Refuse, naming the key, a CMAE file that misses weights or whose branches disagree."""
    full = is_full(state) if full is None else full
    missing = [k for k in _expected(state, full) if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _bad(missing[0], "full pretraining model" if full else "backbone", f"missing key{more}:")
    if not full:
        return
    for online, target in (("backbone.", "target_backbone."), ("projector.", "target_projector.")):
        for k, v in state.items():
            if k.startswith(online) and (t := target + k[len(online):]) in state:
                if tuple(state[t].shape) != tuple(v.shape):
                    raise _bad(t, "momentum branch", f"shape {tuple(state[t].shape)} differs from {k!r} "
                                                     f"{tuple(v.shape)} for key")
    for p in ("projector.", "target_projector.", "head.predictor."):
        if f"{p}bn{_count_fc(state, p) - 1}.weight" in state:
            raise _bad(f"{p}bn{_count_fc(state, p) - 1}.weight", p.rstrip("."),
                       "a BatchNorm after the last layer (with_last_bn=True) is not supported; key")
    if "head.predictor.fc0.weight" in state:
        p_out = state[f"projector.fc{_count_fc(state, 'projector.') - 1}.weight"].shape[0]
        if state["head.predictor.fc0.weight"].shape[1] != p_out:
            raise _bad("head.predictor.fc0.weight", "predictor", f"input width {state['head.predictor.fc0.weight'].shape[1]} "
                                                                  f"!= projector output {p_out} for key")
    dim = state["backbone.patch_embed.projection.weight"].shape[0]
    if state["feature_decoder.decoder_pred.weight"].shape[0] != dim:
        raise _bad("feature_decoder.decoder_pred.weight", "feature decoder",
                   f"output width {state['feature_decoder.decoder_pred.weight'].shape[0]} != encoder width {dim} "
                   "(the projector reads both) for key")
    w = state["backbone.patch_embed.projection.weight"]
    pix = w.shape[1] * w.shape[2] * w.shape[3]
    if state["pixel_decoder.decoder_pred.weight"].shape[0] != pix:
        raise _bad("pixel_decoder.decoder_pred.weight", "pixel decoder",
                   f"output width {state['pixel_decoder.decoder_pred.weight'].shape[0]} != "
                   f"{w.shape[2]}x{w.shape[3]}x{w.shape[1]} pixels per patch for key")


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CMAE keys -> mimkit's ``cmae`` model keys.

    Accepts the mmengine file (``{"state_dict": ...}``), a full model's state dict
    (``backbone.*``, ``target_backbone.*``, ...) or a backbone-only one (the keys of
    ``tools/extract_backbone_weights.py``, no prefix), whose weights go to the online encoder
    *and* the momentum encoder (the official ``init_weights`` starts the target as a copy).
    A full file's momentum encoder has no final norm (``final_norm=False``): mimkit's copy of
    it, unused when ``final_norm`` is off, gets the online encoder's. Unknown keys raise a
    ``CheckpointError`` naming them.
    """
    state = state_of(state)
    if state is None:
        raise CheckpointError("CMAE checkpoint: not a mapping of weights")
    full = is_full(state)
    check(state, full)
    out: dict[str, torch.Tensor] = {}
    if not full:
        for k, v in state.items():
            name = _vit_key(k, k, "backbone")
            out["encoder.vit." + name] = v
            out["teacher.copies.encoder.vit." + name] = v
        return out
    for k, v in state.items():
        part = next((p for p in sorted(PARTS, key=len, reverse=True) if k.startswith(p)), None)
        if part is None:
            raise _bad(k, "full pretraining model", "unexpected key (not a CMAE module)")
        out[PARTS[part] + _CONVERT[part](k[len(part):], k, part.rstrip("."))] = v
    for leaf in _BLOCK_LEAVES:  # the momentum encoder's unused final norm
        out.setdefault(f"teacher.copies.encoder.vit.norm.{leaf}", state[f"backbone.ln1.{leaf}"].clone())
    out["teacher.last_momentum"] = torch.tensor(MOMENTUM)
    return out


def _vit_recipe(state: Mapping[str, torch.Tensor], p: str) -> dict[str, Any]:
    w = state[p + "patch_embed.projection.weight"]  # (D, C, p, p)
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n = state[p + "pos_embed"].shape[1] - 1
    side = int(round(n**0.5))
    if side * side != n or w.shape[2] != w.shape[3]:
        raise _bad(p + "pos_embed", "backbone", f"{n} positions are not a square grid of square patches for key")
    depth = _count(state, p + "layers.")
    hidden = state[p + "layers.0.ffn.layers.0.0.weight"].shape[0]
    heads = ARCH_HEADS.get((dim, depth, hidden), WIDTH_HEADS.get(dim, max(1, dim // 64)))
    return {"name": "vit", "model": "vit_base_patch16_224", "img_size": side * patch, "patch_size": patch,
            "in_chans": chans, "embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": hidden / dim,
            "norm_eps": 1e-6, "pos_embed": "sincos", "mode": "visible_only", "init": "mae"}


def _decoder_recipe(state: Mapping[str, torch.Tensor], p: str) -> dict[str, Any]:
    d = state[p + "decoder_embed.weight"].shape[0]
    return {"name": "mae", "embed_dim": d, "depth": _count(state, p + "decoder_blocks."), "num_heads": DECODER_HEADS,
            "mlp_ratio": state[p + "decoder_blocks.0.ffn.layers.0.0.weight"].shape[0] / d, "norm_eps": 1e-6}


def _neck_recipe(state: Mapping[str, torch.Tensor], p: str) -> dict[str, Any]:
    n = _count_fc(state, p)
    return {"hidden_dim": state[p + "fc0.weight"].shape[0], "out_dim": state[f"{p}fc{n - 1}.weight"].shape[0],
            "layers": n, "norm": "bn", "last_bias": f"{p}fc{n - 1}.bias" in state, "bn_eps": 1e-6}


def recipe_for(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``cmae`` recipe of the architecture an official file describes (sizes read from the
    weights; mask ratio, temperature and momentum from the shipped configs). A backbone-only
    file gets the ViT-B/16 config's decoders and heads (its keys carry no prefix)."""
    state = state_of(state)
    full = is_full(state)
    encoder = _vit_recipe(state, "backbone." if full else "")
    dim = encoder["embed_dim"]
    teacher = {"name": "ema", "copy": ["encoder", "projector"], "input_key": "image_target", "momentum": MOMENTUM,
               "momentum_end": MOMENTUM, "schedule": "constant", "every": "step", "attention": False,
               "final_norm": bool(full and "target_backbone.ln1.weight" in state)}
    model: dict[str, Any] = {
        "name": "cmae", "encoder": encoder,
        "masker": {"name": "cmae_block", "ratio": MASK_RATIO, "block": 2},
        "target": {"name": "pixels", "norm": "patch"},
        "teacher": teacher,
        "infonce": {"temperature": TEMPERATURE, "symmetric": False, "scale_2tau": True, "gather": True},
    }
    if full:
        model["decoder"] = _decoder_recipe(state, "pixel_decoder.")
        model["feature_decoder"] = {**_decoder_recipe(state, "feature_decoder."), "out_dim": dim}
        model["projector"] = _neck_recipe(state, "projector.")
        model["predictor"] = _neck_recipe(state, "head.predictor.")
    else:
        model["decoder"] = {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": DECODER_HEADS}
        model["feature_decoder"] = {"name": "mae", "embed_dim": 512, "depth": 2, "num_heads": DECODER_HEADS,
                                    "out_dim": dim}
        model["projector"] = {"hidden_dim": 1536, "out_dim": 256, "layers": 2, "norm": "bn", "last_bias": False,
                              "bn_eps": 1e-6}
        model["predictor"] = dict(model["projector"])
    return {"model": model}


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: a CMAE mmengine checkpoint (full model) or a backbone
    file of ``tools/extract_backbone_weights.py``; anything else returns None."""
    state = state_of(obj)
    if state is None:
        return None
    if is_full(state):
        converted = convert_official(state)  # checks the keys first: errors name the official key
        return recipe_for(state), converted, True
    if is_backbone(obj):
        converted = convert_official(state)
        warnings.warn("CMAE backbone-only checkpoint: the online and momentum encoders are loaded; the pixel and "
                      "feature decoders, projector and predictor keep their random initialization", stacklevel=2)
        return recipe_for(state), converted, False
    return None


class _Inert:
    """What an mmengine logging object (``HistoryBuffer``) of ``message_hub`` is read into: an
    attribute bag, so that a training checkpoint loads with ``weights_only=True`` and no mmengine."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


#: The pickled names of a raw mmengine training checkpoint beyond tensors and builtins.
_MMENGINE_NAMES = ("mmengine.logging.history_buffer.HistoryBuffer",)


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy arrays and scalars (HistoryBuffer's history), under numpy 1.x and 2.x names."""
    core = getattr(np, "_core", None) or np.core
    out: list[tuple[Any, str]] = []
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(core.multiarray._reconstruct, f"{mod}._reconstruct"), (core.multiarray.scalar, f"{mod}.scalar")]
    out += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for t in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        dt = type(np.dtype(t))
        out.append((dt, f"numpy.dtypes.{dt.__name__}"))
    return out


#: What raw mmengine training checkpoints pickle beside tensors (hook ``mimkit_pickled``): the
#: ``message_hub``'s ``HistoryBuffer`` objects, read into inert bags, and their numpy histories.
PICKLED: dict[str, Any] = {name: obj for obj, name in _numpy_globals()} | {name: _Inert for name in _MMENGINE_NAMES}
