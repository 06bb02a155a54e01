"""The recipe resolver: YAML -> presets deep-merged -> ``--set`` overrides -> a validated Recipe.

Every error names the key path, the bad value and what is allowed. Component sections
(``model``, ``data``, ``eval_data``, ``model.encoder``, ...) are mappings with a ``name`` that
picks a registered class; the rest of the mapping is validated against that class's
``Config``, recursively through the sub-components each ``Config`` declares
(:func:`mimkit.schema.validate_component`). :func:`resolve` returns only fully validated
recipes, so nothing on disk changes before a typo is reported.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import attrs
import yaml

from .errors import ConfigError
from .plugins import Registry
from .plugins import registry as get_registry
from .schema import (  # noqa: F401  (re-exported: the schema toolkit used to live here)
    FieldError, component, converter, one_of, structure, unstructure, validate_component,
)

# ---------------------------------------------------------------------------------------------
# The recipe


@attrs.define(kw_only=True)
class OptimConfig:
    """Optimizer and schedule, covering the papers' recipes."""

    name: str = attrs.field(default="adamw", validator=one_of("adamw", "sgd"))
    base_lr: float = 1.5e-4  # per ref_batch samples
    lr: float | None = None  # absolute lr; overrides base_lr scaling when set
    ref_batch: int = 256  # lr = base_lr * effective batch / ref_batch (MFM uses 512)
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9  # SGD
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine weight-decay schedule (AttMask/iBOT)
    decay_tokens: bool = True  # the official MAE code decays cls/mask tokens (3-D params)
    warmup_epochs: float = 40.0
    warmup_start_lr: float = 0.0
    min_lr: float = 0.0
    clip_grad: float | None = None
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning)
    impl: str = attrs.field(default="auto", validator=one_of("auto", "fused", "foreach", "forloop"))  # auto = fused


@attrs.define(kw_only=True)
class TrainConfig:
    """The loop: length, batch, precision, logging and checkpoint cadence, failure policies."""

    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; stops early when set
    batch_size: int = 64  # per process
    grad_accum: int = 1
    # YAML 1.1 reads a bare `no` as false: accept it as "no"
    mixed_precision: str | bool = attrs.field(default="no", converter=lambda v: "no" if v is False else v,
                                              validator=one_of("no", "bf16", "fp16", "auto"))  # auto: bf16 where native
    num_workers: int = 0
    batched_data: bool = True  # the dataset's get_batch fast path when it has one (per-sample seeded)
    log_every: int = 10
    ckpt_every: int = 500  # optimizer steps
    keep_last: int = 2
    nonfinite: str = attrs.field(default="stop", validator=one_of("stop", "skip"))
    # torch.compile of the model: "auto" = on CUDA only (on the CPU it did not pay back within the demo)
    compile: bool | str = attrs.field(default="auto", validator=one_of(True, False, "auto"))
    attention: str = attrs.field(default="auto", validator=one_of("auto", "math", "flash", "efficient", "cudnn"))
    grad_checkpointing: bool = False
    deterministic: bool = True
    visualize: bool = True
    progress: bool = True
    knn_every: int | None = None  # online k-NN probe every N steps (main process, held-out subset)
    knn_train: int = 2000  # bank: the first N un-augmented training items
    knn_test: int = 1000  # queries: the first N items of eval_data


@attrs.define(kw_only=True)
class Recipe:
    """A whole run. ``data`` and ``model`` are component mappings validated at build time."""

    name: str = "run"
    method: str | None = None
    seed: int = 0
    output_dir: str = "runs"
    data: dict[str, Any] = attrs.field(factory=lambda: {"name": "fashion_mnist"})
    eval_data: dict[str, Any] | None = None
    model: dict[str, Any] = attrs.field(factory=dict)
    optim: OptimConfig = attrs.field(factory=OptimConfig)
    train: TrainConfig = attrs.field(factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# Loading, merging, overriding


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in ``over`` replace. A component mapping
    that names a different component (``name`` changes) replaces the old one whole, since
    the old component's options mean nothing to the new one."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        renamed = isinstance(value, Mapping) and isinstance(old, Mapping) and "name" in value and value.get("name") != old.get("name")
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not renamed:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """``yaml.safe_load`` a recipe file; Python tags and non-mappings are refused by name."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not a valid safe YAML recipe ({exc.__class__.__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping, got {type(data).__name__}")
    return data


def package_presets(package: str, folder: str = "recipes") -> dict[str, dict[str, Any]]:
    """Every ``<folder>/*.yaml`` shipped inside ``package``, by file stem: what a plugin's
    ``mimkit_presets`` hook returns."""
    from importlib import resources

    files = sorted(resources.files(package).joinpath(folder).iterdir(), key=lambda f: f.name)
    return {f.name[: -len(".yaml")]: yaml.safe_load(f.read_text()) for f in files if f.name.endswith(".yaml")}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; the value is parsed as a YAML scalar."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. model.masker.ratio=0.9), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {text!r} ({exc})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {part!r} holds {nxt!r}, not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def resolve_presets(raw: Mapping[str, Any], registry: Any, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Replace ``method: NAME`` by the preset's mapping with ``raw`` deep-merged over it."""
    name = raw.get("method")
    if not name:
        return dict(raw)
    if not isinstance(name, str):
        raise ConfigError(f"invalid value {name!r} for 'method': expected a preset name")
    if name in _seen:
        raise ConfigError(f"presets form a cycle: {' -> '.join((*_seen, name))}")
    preset = registry.get("presets", name, where="method")
    base = resolve_presets(preset, registry, (*_seen, name))
    merged = deep_merge(base, {k: v for k, v in raw.items() if k != "method"})
    merged["method"] = name
    return merged


def resolve(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> Recipe:
    """Any recipe form (file path, mapping, Recipe) -> a validated :class:`Recipe`."""
    if registry is None:
        registry = get_registry()
    if isinstance(recipe, Recipe):
        raw = unstructure(recipe)
    elif isinstance(recipe, Mapping):
        raw = copy.deepcopy(dict(recipe))
    elif not Path(recipe).exists() and str(recipe) in registry.components["presets"]:
        raw = {"method": str(recipe)}  # `mim train PRESET_NAME`
    else:
        if not Path(recipe).exists():
            presets = ", ".join(registry.names("presets")) or "none installed"
            raise ConfigError(f"recipe file not found and no preset of that name: {recipe} (presets: {presets})")
        raw = load_yaml(recipe)
    raw = apply_overrides(raw, overrides)
    raw = resolve_presets(raw, registry)
    recipe_obj = structure(Recipe, raw, "")
    validate(recipe_obj, registry)
    return recipe_obj


def validate(recipe: Recipe, registry: Registry) -> None:
    """Validate every component spec of ``recipe`` (model, data, eval_data and their nested
    components) against its class's ``Config``; raises :class:`ConfigError` naming the key."""
    validate_component("models", recipe.model, "model", registry, default="masked")
    validate_component("datasets", recipe.data, "data", registry)
    if recipe.eval_data is not None:
        validate_component("datasets", recipe.eval_data, "eval_data", registry)


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved into every run folder)."""
    return yaml.safe_dump(unstructure(recipe), sort_keys=False)
