"""The Python API: build a model from a recipe, load one from a run, checkpoint or official file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from . import checkpoint as ckpt
from .components import BuildEnv
from .config import Recipe, component, dump, resolve, yaml_load
from .errors import CheckpointError, MimkitError
from .plugins import registry as get_registry


ENCODER_PREFIX = "encoder.vit."


class _Keys:
    """A stand-in module whose state dict is a subset (for key checks of partial files)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def build_model(recipe: Recipe, registry: Any = None) -> torch.nn.Module:
    """The model a resolved recipe describes (the composed ``masked`` model by default)."""
    reg = registry or get_registry()
    cls, cfg = component("models", recipe.model, "model", reg, default="masked")
    return cls(cfg, BuildEnv(registry=reg, load=load))


def build(recipe: str | os.PathLike | Mapping[str, Any] | Recipe, overrides: list[str] | None = None) -> torch.nn.Module:
    """Resolve a recipe (file, mapping or Recipe; presets and ``overrides`` applied) and build
    its model, randomly initialized, with ``.recipe`` set (so it can be exported as is)."""
    resolved = resolve(recipe, overrides)
    model = build_model(resolved)
    model.recipe = resolved
    return model


def dry_run(recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
            overrides: list[str] | None = None) -> tuple[str, dict[str, int]]:
    """The resolved, validated recipe as YAML and the model's parameter counts, built on the
    meta device (no memory, no files written): what ``mim train --dry-run`` prints."""
    resolved = resolve(recipe, overrides)
    with torch.device("meta"):
        model = build_model(resolved)
    params = list(model.parameters())
    return dump(resolved), {"total": sum(p.numel() for p in params),
                            "trainable": sum(p.numel() for p in params if p.requires_grad)}


def build_dataset(recipe: Recipe, train: bool | None = None, eval_split: bool = False, registry: Any = None):
    """The dataset of ``recipe.data`` (or ``recipe.eval_data`` with ``eval_split``)."""
    reg = registry or get_registry()
    spec = recipe.eval_data if eval_split and recipe.eval_data is not None else recipe.data
    path = "eval_data" if eval_split and recipe.eval_data is not None else "data"
    cls, cfg = component("datasets", spec, path, reg)
    return cls(cfg, train=train)


def held_out_dataset(recipe: Recipe, registry: Any = None):
    """The run's labelled held-out data, un-augmented, or ``None`` when it has none:
    ``recipe.eval_data`` when given, else the labelled test split the data source declares
    (``eval_split(config, "test")``: Fashion-MNIST's test set, an image folder's sibling
    ``val``/``test`` folder)."""
    reg = registry or get_registry()
    if recipe.eval_data is not None:
        return build_dataset(recipe, train=False, eval_split=True, registry=reg)
    cls, cfg = component("datasets", recipe.data, "data", reg)
    split = getattr(cls, "eval_split", None)
    test_cfg = split(cfg, "test") if split is not None else None
    return None if test_cfg is None else cls(test_cfg, train=False)


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Load a state dict after checking keys and shapes (errors list the mismatches)."""
    ckpt.check_compatible(model, dict(state), source, strict=strict)
    model.load_state_dict(state, strict=strict)


def _checkpoint_dir(path: Path) -> Path | None:
    if ckpt.has_model(path):
        return path
    if (path / "checkpoints").is_dir():
        return ckpt.latest(path / "checkpoints")
    if path.name == "checkpoints":
        return ckpt.latest(path)
    return None


def _recipe_of(text: str, where: str, overrides: list[str] | None) -> Recipe:
    """The recipe stored with a checkpoint or an export; damage is a CheckpointError naming it."""
    raw = yaml_load(text, where)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: not a recipe mapping; the file is damaged")
    return resolve(raw, overrides)


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> torch.nn.Module:
    """A model ready for feature extraction (eval mode) from a run folder (its newest complete
    checkpoint), a checkpoint folder, a mimkit ``.safetensors`` export, or an official file or
    Hugging Face ``save_pretrained`` folder that an installed importer recognizes (e.g.
    facebookresearch/mae ``{"model": ...}``, a ``ViTMAEForPreTraining`` folder)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file or folder: {p}")
    if p.is_dir():
        if (p / "config.json").is_file() and not (p / "recipe.yaml").is_file():  # a Hugging Face save_pretrained folder
            return _import(ckpt.read_hf_folder(p), p, overrides, "this Hugging Face folder")
        d = _checkpoint_dir(p)
        if d is None:
            raise CheckpointError(f"{p} holds no complete checkpoint (looked for model.safetensors, "
                                  "checkpoints/step_*/COMPLETE, or a Hugging Face config.json)")
        if not (d / "recipe.yaml").is_file():
            raise CheckpointError(f"{d} lacks recipe.yaml: the checkpoint is incomplete (copy the run's recipe.yaml "
                                  "into it to rebuild the model)")
        recipe = _recipe_of((d / "recipe.yaml").read_text(errors="replace"), str(d / "recipe.yaml"), overrides)
        model = build_model(recipe)
        load_state(model, *ckpt.load_model_state(d))
        model.recipe = recipe
        return model.eval()
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # truncated, garbage, a header that lies
            raise CheckpointError(f"cannot read {p}: not a complete safetensors file ({ckpt._first_line(exc)})") from None
        if "mimkit_recipe" not in meta:
            raise CheckpointError(f"{p} carries no mimkit recipe in its metadata; for a timm export use timm.create_model")
        recipe = _recipe_of(meta["mimkit_recipe"], f"{p} (metadata mimkit_recipe)", overrides)
        model = build_model(recipe)
        state = ckpt.load_tensors(p)
        if meta.get("mimkit_content", "full") == "encoder":  # a timm export: keys lack "encoder.vit."
            state = {ENCODER_PREFIX + k: v for k, v in state.items()}
            own = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIX)}
            ckpt.check_compatible(_Keys(own), state, str(p), strict=True)
            model.load_state_dict(state, strict=False)
        else:
            load_state(model, state, str(p))
        model.recipe = recipe
        return model.eval()
    pickled = get_registry().components["pickled"]  # stand-ins for what official files pickle (hook mimkit_pickled)
    return _import(ckpt.load_torch(p, pickled), p, overrides, "this file")


def _import(obj: Any, p: Path, overrides: list[str] | None, what: str) -> torch.nn.Module:
    """The model of the first installed importer that recognizes ``obj`` (hook ``mimkit_importers``)."""
    reg = get_registry()
    for name, importer in reg.components["importers"].items():
        try:
            found = importer(obj)
        except MimkitError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{p}: importer {name!r} recognized the file but it is incomplete or damaged "
                                  f"({type(exc).__name__}: {ckpt._first_line(exc)})") from None
        if found is None:
            continue
        recipe_map, converted, strict = found if len(found) == 3 else (*found, True)
        recipe = resolve(recipe_map, overrides)
        model = build_model(recipe)
        load_state(model, converted, f"{p} (via importer {name!r})", strict=strict)
        model.recipe = recipe
        return model.eval()
    known = ", ".join(f"{n} ({reg.providers['importers'][n]})" for n in reg.names("importers")) or "none installed"
    extra = ""
    if isinstance(obj, Mapping) and isinstance(obj.get("hf_config"), Mapping):
        extra = f" (config.json model_type {obj['hf_config'].get('model_type')!r}, architectures " \
                f"{obj['hf_config'].get('architectures')})"
    raise CheckpointError(f"{p}: no installed importer recognizes {what}{extra}; importers: {known}")
