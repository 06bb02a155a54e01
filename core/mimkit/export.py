"""Export a model: the encoder for timm, or the whole model for :func:`mimkit.load`.

* ``timm``: the ViT encoder's weights under timm's own key names (``encoder.vit.`` stripped)
  as safetensors, loadable with ``timm.create_model(..., pretrained=True,
  pretrained_cfg_overlay=dict(file=PATH), num_classes=0, <size kwargs>)``. The file also
  carries ``mimkit_recipe`` and ``mimkit_content: encoder`` so mimkit can rebuild it.
* ``full``: every tensor of the model (encoder, decoder, ...) with ``mimkit_recipe`` and
  ``mimkit_content: full``; ``mimkit.load(file)`` restores it exactly, so pretraining or
  evaluation can continue from one file.
* a plugin's format (hook ``mimkit_exporters``), e.g. ``hf``: a folder written by the first
  registered exporter of that format that describes the model (the MAE plugin writes
  ``ViTMAEForPreTraining``, the VideoMAE plugin ``VideoMAEForPreTraining`` folders).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import checkpoint as ckpt
from .config import dump
from .errors import ConfigError, MimkitError
from .api import ENCODER_PREFIX
from .evaluation import load_source, timm_kwargs, vit_encoder
from .plugins import registry as get_registry

FORMATS = ("timm", "full")


def timm_create_call(model: torch.nn.Module, path: str | os.PathLike) -> str:
    """The exact ``timm.create_model`` call that loads a timm export of ``model``.

    Size kwargs are needed because the tiny encoders differ from the named timm config;
    ``num_classes=0`` because the file holds no head. The timm model's ``forward_features``
    equals ours; its pooled output equals ``model.features(x, "cls")`` with the named model's
    default ``global_pool='token'`` (no ``fc_norm``); with ``global_pool='avg'`` timm moves the
    final norm into a fresh ``fc_norm``, so that path needs fine-tuning (or copying the norm).
    """
    enc = vit_encoder(model)
    kw = ", ".join(f"{k}={v!r}" for k, v in timm_kwargs(enc).items())
    if getattr(enc.config, "norm_eps", None) is not None:  # e.g. 1e-12 of a Hugging Face import
        kw += f", norm_layer=functools.partial(torch.nn.LayerNorm, eps={enc.config.norm_eps!r})"
    return (f"timm.create_model({enc.config.model!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(path)!r}), num_classes=0, {kw})")


def timm_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's ViT weights with timm's keys: ``encoder.vit.blocks.0...`` -> ``blocks.0...``.
    (A ``with_mask_token`` encoder's ``mask_token`` is not part of timm's ViT and is left out.)"""
    vit_encoder(model)
    state = ckpt.state_dict_for_save(model)
    return {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}


def export(
    source: str | os.PathLike | torch.nn.Module,
    out: str | os.PathLike,
    format: str = "timm",
) -> dict[str, Any]:
    """Write ``source`` (a model with ``.recipe``, or anything :func:`mimkit.load` accepts) to
    ``out`` in ``format``; returns {"path", "format", "num_tensors", "create_model"?} (a plugin
    format: {"path", "format", "exporter", "num_files", "load_hint"})."""
    plugin = plugin_formats()
    allowed = FORMATS + tuple(f for f in sorted(plugin) if f not in FORMATS)
    if format not in allowed:
        raise ConfigError(f"export format must be one of {list(allowed)}, got {format!r}"
                          + ("" if plugin else " (no installed plugin registers another format)"))
    model = source if isinstance(source, torch.nn.Module) else load_source(source)
    if format not in FORMATS:
        return export_folder(model, out, format)
    recipe = getattr(model, "recipe", None)
    if recipe is None:
        raise MimkitError("the model carries no recipe (.recipe); load it with mimkit.load or build it from a recipe")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise MimkitError(f"{out}: an export is a .safetensors file")
    if out.is_dir():
        raise MimkitError(f"{out} is a folder: --out names the .safetensors file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MimkitError(f"cannot create the folder of {out}: {exc}") from None
    meta = {"mimkit_recipe": dump(recipe), "mimkit_content": "encoder" if format == "timm" else "full",
            "format": "pt"}
    info: dict[str, Any] = {"path": str(out), "format": format}
    if format == "timm":
        state = timm_state(model)
        info["create_model"] = timm_create_call(model, out)
        meta["timm_create_model"] = info["create_model"]
    else:
        state = ckpt.state_dict_for_save(model)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, out)  # never a half-written export under the final name
    except BaseException as exc:  # disk full, a folder in the way: no temporary file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception):
            raise MimkitError(f"cannot write {out}: {ckpt._first_line(exc)}") from None
        raise
    info["num_tensors"] = len(state)
    return info


def plugin_formats() -> dict[str, list[str]]:
    """{format: [exporter names, in the order they are tried]} of the installed exporters."""
    reg = get_registry()
    out: dict[str, list[str]] = {}
    for name in reg.names("exporters"):
        out.setdefault(reg.components["exporters"][name].format, []).append(name)
    return out


def export_folder(model: torch.nn.Module, out: str | os.PathLike, format: str) -> dict[str, Any]:
    """Write ``model`` as a folder in a plugin's ``format``: the first exporter of that format
    whose ``check`` accepts the model writes into a temporary folder, renamed to ``out`` once
    complete. A model no exporter describes is a ConfigError giving each one's reason."""
    reg = get_registry()
    names = plugin_formats().get(format, [])
    out = Path(out)
    if out.suffix == ".safetensors" or out.is_file():
        raise ConfigError(f"{out}: a {format!r} export is a folder; name a new (or empty) folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: name a new folder (nothing was written)")
    reasons = []
    for name in names:
        exporter = reg.components["exporters"][name]
        try:
            exporter.check(model)
        except ConfigError as exc:
            reasons.append(f"{name} ({reg.providers['exporters'][name]}): {exc}")
            continue
        break
    else:
        what = getattr(getattr(model, "recipe", None), "method", None) or type(model).__name__
        raise ConfigError(f"no installed {format!r} exporter describes this model ({what}): " + " | ".join(reasons))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        exporter.write(model, tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)  # never a half-written folder under the final name
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise MimkitError(f"cannot write {out}: {ckpt._first_line(exc)}") from None
        raise
    return {"path": str(out), "format": format, "exporter": name, "describes": exporter.describes,
            "num_files": sum(1 for _ in out.iterdir()),
            "load_hint": exporter.load_hint.replace("{path}", repr(str(out)))}

