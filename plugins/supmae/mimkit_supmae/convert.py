"""Import enyac-group/supmae pretraining checkpoints.

The layout is read from the code that writes them (``main_pretrain_supmae.py`` ->
``misc.save_model``: ``{"model": SupervisedMaskedAutoencoderViT.state_dict(), ...}``): the MAE
keys of facebookresearch/mae (converted by mimkit-mae) plus the classification branch
``cls_head.{0,1,3}.*`` (Linear, BatchNorm1d with running statistics, Linear), which becomes the
``visible_token_classification`` loss's ``head``. No released file was opened (no downloads
here): the key names follow the model class.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from mimkit_mae.convert import convert_official as convert_mae
from mimkit_mae.convert import recipe_for as mae_recipe_for


def convert_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SupMAE keys -> mimkit's (MAE keys + ``losses.cls.head.*``)."""
    state = state["model"] if isinstance(state.get("model"), Mapping) else state
    out = convert_mae({k: v for k, v in state.items() if not k.startswith("cls_head.")})
    for k, v in state.items():
        if k.startswith("cls_head."):
            out["losses.cls.head." + k[len("cls_head."):]] = v
    return out


def recipe_for(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    recipe = mae_recipe_for(state)
    dim = state["patch_embed.proj.weight"].shape[0]
    hidden = state["cls_head.0.weight"].shape[0]
    classes = state["cls_head.3.weight"].shape[0]
    recipe["model"]["losses"]["cls"] = {"name": "visible_token_classification", "weight": 0.01,
                                        "num_classes": classes, "hidden_ratio": hidden / dim,
                                        "temperature": 10.0, "pool": "mean"}
    return recipe


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: a SupMAE file (MAE keys + ``cls_head.0/1/3``), else None."""
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("model", obj)
    if not isinstance(state, Mapping) or "patch_embed.proj.weight" not in state or "cls_head.3.weight" not in state:
        return None
    return recipe_for(state), convert_official(state), True
