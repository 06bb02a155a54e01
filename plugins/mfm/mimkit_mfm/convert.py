"""Import Jiahao000/MFM pretraining checkpoints (official key names) into mimkit.

What the official code saves (read from the code; no released file was opened):

* ``utils.save_checkpoint`` writes ``{"model": MFM.state_dict(), "optimizer", "lr_scheduler",
  "max_accuracy", "epoch", "config"}`` (+ ``"amp"`` when apex mixed precision is on, the
  default ``--amp-opt-level O1``); ``"config"`` is the run's yacs ``CfgNode``.
* ``models/mfm.py`` ``MFM`` holds ``encoder`` and ``decoder`` (the loss and the input
  normalization have no tensors), so every model key starts with ``encoder.`` or ``decoder.``.
* ViT (``VisionTransformerForMFM`` on ``models/vision_transformer.py``, BEiT's ViT)::

      encoder.cls_token (1, 1, D)      encoder.pos_embed (1, 1 + N, D)  (learned, USE_APE)
      encoder.patch_embed.proj.{weight (D, C, p, p), bias}
      encoder.blocks.i.norm1/norm2.{weight,bias}
      encoder.blocks.i.attn.qkv.weight (3D, D)  (no bias)   attn.q_bias (D)  attn.v_bias (D)
      encoder.blocks.i.attn.proj.{weight,bias}  mlp.fc1.*  mlp.fc2.*
      encoder.blocks.i.gamma_1, gamma_2 (D)    only with INIT_VALUES (None in the released configs)
      encoder.norm.{weight,bias}              (USE_MEAN_POOLING False: the final LayerNorm, eps 1e-6)

  Relative position biases (USE_RPB / USE_SHARED_RPB, off in the released configs) have no
  counterpart in mimkit's ViT: such files are refused, naming the key.
* ResNet (``ResNetForMFM``: timm's ``ResNet(Bottleneck, LAYERS)``, ``num_classes=0``): timm's
  key names under ``encoder.`` (``conv1``, ``bn1``, ``layerK.i.{conv1..3,bn1..3,downsample.0/1}``,
  BatchNorm running statistics); no ``fc``.
* Decoder (``MFM.__init__`` with decoder depth 0, the released configs):
  ``nn.Sequential(Conv2d(D, stride^2 * 3, 1), PixelShuffle(stride))``: ``decoder.0.{weight,bias}``,
  stride 16 (ViT) / 32 (ResNet). The Transformer decoder (``VisionTransformerDecoderForMFM``,
  depth > 0) and the Swin encoder are not implemented in mimkit: refused, naming the key.

mimkit's names: ``encoder.vit.*`` (timm ViT: ``qkv.bias`` = [q_bias, 0, v_bias], ``ls1/ls2.gamma``),
``encoder.net.*`` (timm ResNet), ``decoder.proj.*`` (the 1x1 convolution).
"""
from __future__ import annotations

import collections
import copy
import re
import warnings
from typing import Any, Mapping

import torch

from mimkit.plugin_api import CheckpointError, package_presets

#: Heads per width of the official ViT configs (heads are not recoverable from weights).
_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}
#: timm ResNet names for the Bottleneck stage depths (the official ResNetForMFM always uses Bottleneck).
_RESNETS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152",
            (3, 24, 36, 3): "resnet200"}


class _YacsConfig:
    """Stands for ``yacs.config.CfgNode`` when ``torch.load(weights_only=True)`` reads an official
    file: the node is rebuilt as a plain ``OrderedDict`` of its items (no yacs code runs)."""

    def __new__(cls, *args: Any) -> collections.OrderedDict:  # type: ignore[misc]
        return collections.OrderedDict()


#: What official files pickle beside tensors (hook ``mimkit_pickled``): the run's yacs ``CfgNode``.
PICKLED = {"yacs.config.CfgNode": _YacsConfig}


def _count(state: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def backbone(state: Mapping[str, Any]) -> str | None:
    """``"vit"``, ``"resnet"`` or None: which official MFM encoder a state dict holds."""
    if not isinstance(state, Mapping) or not state:
        return None
    if not all(isinstance(k, str) and k.startswith(("encoder.", "decoder.")) for k in state):
        return None  # MFM holds only these two submodules (other methods' files have more)
    if any(k.startswith(("encoder.vit.", "encoder.net.")) for k in state):
        return None  # mimkit's own layout
    if "encoder.mask_token" in state:
        return None  # SimMIM's ViT (same code base, but with a mask token); MFM has none
    w = state.get("encoder.patch_embed.proj.weight")
    if getattr(w, "ndim", 0) == 4 and "encoder.cls_token" in state and "encoder.blocks.0.attn.qkv.weight" in state \
            and "encoder_to_decoder.weight" not in state:
        return "vit"
    if "encoder.conv1.weight" in state and "encoder.layer1.0.conv1.weight" in state:
        return "resnet"
    return None


def _refuse_unsupported(state: Mapping[str, Any]) -> None:
    for k in state:
        if "relative_position_bias_table" in k or "rel_pos_bias" in k:
            raise CheckpointError(f"MFM checkpoint key {k!r}: relative position biases (USE_RPB / USE_SHARED_RPB) "
                                  "are not supported by mimkit's ViT; only absolute positions (USE_APE) import")
        if k.startswith("decoder.") and not k.startswith("decoder.0."):
            raise CheckpointError(f"MFM checkpoint key {k!r}: only the 1x1 conv + PixelShuffle decoder (decoder "
                                  "depth 0, the released configs) imports; the Transformer decoder is not implemented")


_VIT_TOP = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")


def _check_vit_keys(state: Mapping[str, Any]) -> None:
    """Every block holds the same parameters, and the embedding/final norm are present: a gap is
    an error naming the official key (rather than mimkit's name after conversion)."""
    for name in _VIT_TOP:
        _need(state, "encoder." + name)
    blocks: dict[int, set[str]] = {}
    for k in state:
        if m := re.match(r"encoder\.blocks\.(\d+)\.(.+)$", k):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    every = set().union(*blocks.values()) if blocks else set()
    for a, b in (("attn.q_bias", "attn.v_bias"), ("gamma_1", "gamma_2")):
        for have, lack in ((a, b), (b, a)):
            if have in every and lack not in every:
                raise CheckpointError(f"MFM checkpoint has 'encoder.blocks.N.{have}' but lacks "
                                      f"'encoder.blocks.0.{lack}': the file is incomplete or damaged")
    for i in range(max(blocks) + 1 if blocks else 0):
        for suffix in sorted(every - blocks.get(i, set())):
            raise CheckpointError(f"MFM checkpoint lacks 'encoder.blocks.{i}.{suffix}' (other blocks have it): "
                                  "the file is incomplete or damaged")


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MFM key names (ViT or ResNet, ``{"model": ...}`` or the bare state) -> mimkit's."""
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    kind = backbone(state)
    if kind is None:
        raise CheckpointError("not an official MFM state dict: expected encoder.patch_embed.proj.weight + "
                              "encoder.cls_token (ViT) or encoder.conv1.weight + encoder.layer1.0.conv1.weight (ResNet)")
    _refuse_unsupported(state)
    if kind == "vit":
        _check_vit_keys(state)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("decoder.0."):
            out["decoder.proj." + k[len("decoder.0."):]] = v
            continue
        name = k[len("encoder."):]
        if kind == "resnet":
            if name.startswith("fc."):
                continue  # a classifier (num_classes > 0): not part of pretraining
            out["encoder.net." + name] = v
            continue
        if name.startswith(("head.", "fc_norm.")):
            continue  # fine-tuning parts (num_classes 0 / no mean pooling in pretraining)
        m = re.match(r"blocks\.(\d+)\.(.+)$", name)
        if m and m.group(2) in ("attn.q_bias", "attn.v_bias"):
            pre = f"encoder.blocks.{m.group(1)}.attn."
            other = pre + ("v_bias" if m.group(2) == "attn.q_bias" else "q_bias")
            if other not in state:
                raise CheckpointError(f"MFM checkpoint has {k!r} but lacks {other!r}: the file is incomplete")
            if m.group(2) == "attn.q_bias":  # timm's qkv.bias = [q_bias, 0 (no key bias), v_bias]
                out[f"encoder.vit.blocks.{m.group(1)}.attn.qkv.bias"] = torch.cat([v, torch.zeros_like(v), state[other]])
            continue
        if m and m.group(2) in ("gamma_1", "gamma_2"):
            out[f"encoder.vit.blocks.{m.group(1)}.ls{m.group(2)[-1]}.gamma"] = v
            continue
        out["encoder.vit." + name] = v
    return out


def _cfg(config: Any, *path: str) -> Any:
    """``config[path]`` of the file's (plain-mapping) yacs config, or None."""
    node = config
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def _need(state: Mapping[str, Any], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"MFM checkpoint lacks {key!r}: the file is incomplete")
    return state[key]


def recipe_for(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of the architecture an official MFM state dict describes: the model section of
    the ``mfm_vit_base_patch16`` / ``mfm_resnet50`` preset with the sizes read from the weights
    (heads from the file's ``config`` when present, else the official table; ResNet input size
    from the config, else the official 224) and the masking/loss options of the file's config
    when it carries one."""
    if isinstance(state.get("model"), Mapping):
        config = config if config is not None else state.get("config")
        state = state["model"]
    kind = backbone(state)
    if kind is None:
        raise CheckpointError("not an official MFM state dict (see mimkit_mfm.convert)")
    _refuse_unsupported(state)
    presets = package_presets("mimkit_mfm")
    model = copy.deepcopy(presets["mfm_vit_base_patch16" if kind == "vit" else "mfm_resnet50"]["model"])
    enc = model["encoder"]
    if kind == "vit":
        w = _need(state, "encoder.patch_embed.proj.weight")  # (D, C, p, p)
        dim, chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
        pos = _need(state, "encoder.pos_embed")
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if pos.ndim != 3 or side * side != pos.shape[1] - 1 or pos.shape[2] != dim:
            raise CheckpointError(f"MFM checkpoint key 'encoder.pos_embed': shape {tuple(pos.shape)} is not "
                                  f"(1, 1 + side^2, {dim})")
        heads = _cfg(config, "MODEL", "VIT", "NUM_HEADS") or _HEADS.get(dim, max(1, dim // 64))
        depth = _count(state, "encoder.blocks.")
        fc1 = _need(state, "encoder.blocks.0.mlp.fc1.weight")
        enc.update({"img_size": side * patch, "patch_size": patch, "in_chans": chans, "embed_dim": dim,
                    "depth": depth, "num_heads": int(heads), "mlp_ratio": fc1.shape[0] / dim})
        if "encoder.blocks.0.gamma_1" in state:
            enc["layer_scale"] = 0.1  # only the initial value; the stored gammas replace it
        if "encoder.blocks.0.attn.q_bias" not in state:
            raise CheckpointError("MFM checkpoint lacks 'encoder.blocks.0.attn.q_bias': QKV_BIAS false is not "
                                  "supported (mimkit's ViT always has a qkv bias)")
        stride = patch
    else:
        depths = tuple(_count(state, f"encoder.layer{i}.") for i in range(1, 5))
        if "encoder.layer1.0.conv3.weight" not in state:
            raise CheckpointError("MFM checkpoint lacks 'encoder.layer1.0.conv3.weight': not a Bottleneck ResNet "
                                  "(the official ResNetForMFM always uses Bottleneck)")
        if depths not in _RESNETS:
            raise CheckpointError(f"MFM checkpoint keys 'encoder.layer1..4.*': stage depths {list(depths)} match no timm "
                                  f"ResNet ({', '.join(f'{n} {list(d)}' for d, n in _RESNETS.items())})")
        dim = int(_need(state, "encoder.layer4.0.conv3.weight").shape[0])
        chans = int(_need(state, "encoder.conv1.weight").shape[1])
        enc.update({"model": _RESNETS[depths], "in_chans": chans,
                    "img_size": int(_cfg(config, "DATA", "IMG_SIZE") or 224)})
        stride = 32
    dw = state.get("decoder.0.weight")
    if dw is not None:
        if dw.ndim != 4 or dw.shape[1] != dim or dw.shape[0] % (stride * stride):
            raise CheckpointError(f"MFM checkpoint key 'decoder.0.weight': shape {tuple(dw.shape)} is not "
                                  f"(stride^2 * channels, {dim}, 1, 1) with stride {stride}")
        model["decoder"] = {"name": "linear_pixelshuffle", "stride": stride, "out_chans": dw.shape[0] // (stride * stride)}
    _apply_config(model, config)
    return {"model": model}


def _apply_config(model: dict[str, Any], config: Mapping[str, Any] | None) -> None:
    """The masking and loss options of the official yacs config, when the file carries it."""
    if not isinstance(config, Mapping):
        return
    masker, loss = model["masker"], model["losses"]["rec"]
    if (v := _cfg(config, "DATA", "SAMPLE_RATIO")) is not None:
        masker["p_lowpass"] = float(v)
    if (v := _cfg(config, "DATA", "MASK_RADIUS1")) is not None:
        masker["radius"] = float(v)
    r2, size = _cfg(config, "DATA", "MASK_RADIUS2"), _cfg(config, "DATA", "IMG_SIZE") or 224
    if r2 is not None and float(r2) < size:  # 999 (the released configs): no band
        masker["radius2"] = float(r2)
    for key, name in (("LOSS_GAMMA", "gamma"), ("MATRIX_GAMMA", "matrix_gamma"), ("WITH_MATRIX", "with_matrix"),
                      ("LOG_MATRIX", "log_matrix"), ("BATCH_MATRIX", "batch_matrix")):
        if (v := _cfg(config, "MODEL", "FREQ_LOSS", key)) is not None:
            loss[name] = bool(v) if key.endswith("MATRIX") else float(v)
    if (v := _cfg(config, "MODEL", "RECOVER_TARGET_TYPE")) is not None:
        loss["masked_only"] = v == "masked"
    if (_cfg(config, "MODEL", "FREQ_LOSS", "PATCH_FACTOR") or 1) != 1 or _cfg(config, "MODEL", "FREQ_LOSS", "AVE_SPECTRUM"):
        warnings.warn("MFM checkpoint config: FREQ_LOSS.PATCH_FACTOR != 1 / AVE_SPECTRUM are not implemented in "
                      "mimkit's frequency_distance loss; the weights load, the loss differs", stacklevel=3)
    ft = _cfg(config, "DATA", "FILTER_TYPE")
    if ft not in (None, "mfm"):
        warnings.warn(f"MFM checkpoint config: DATA.FILTER_TYPE {ft!r} (a degradation baseline); the weights load "
                      "into mimkit's MFM model, whose masker is the frequency one", stacklevel=3)


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: an official MFM file (full or encoder-only), else None."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model", obj)
    if not isinstance(state, Mapping) or backbone(state) is None:
        return None
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    recipe = recipe_for(state, config)
    full = "decoder.0.weight" in state
    if not full:
        warnings.warn("encoder-only MFM checkpoint: the decoder keeps its random initialization", stacklevel=2)
    return recipe, convert_official(state), full
