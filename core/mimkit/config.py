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
import re
from pathlib import Path
from typing import Any, Mapping

import attrs
import yaml

from .distributed import DistributedConfig
from .errors import ConfigError
from .plugins import Registry
from .plugins import registry as get_registry
from .schema import (  # noqa: F401  (re-exported: the schema toolkit used to live here)
    FieldError, component, converter, declared_geometry, follow_geometry, in_range, one_of, positive, short,
    structure, unstructure,
    validate_component,
)

# ---------------------------------------------------------------------------------------------
# YAML as users write it: `1e-3`, `1e30`, `1.0e+39` are floats (PyYAML's YAML 1.1 rule wants a
# dot and a signed exponent and reads them as strings)


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's float rule."""


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                  for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` quoting what :class:`Loader` would read as a float (a name ``1e3``)."""


Dumper.yaml_implicit_resolvers = Loader.yaml_implicit_resolvers

MAX_NODES = 200_000  # scalars + containers of a recipe once aliases are expanded


def expanded_size(data: Any, limit: int = MAX_NODES) -> int:
    """How many nodes ``data`` holds with YAML aliases expanded, counted without expanding
    (shared containers are sized once); stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(x: Any, depth: int) -> int:
        if depth > 100:
            raise ConfigError("recipe nested more than 100 levels deep")
        if isinstance(x, (dict, list, tuple)):
            if id(x) in sizes:
                return sizes[id(x)]
            items = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
            total = 1
            for k, v in items:
                total += (1 if k is not None else 0) + size(v, depth + 1)
                if total > limit:
                    break
            sizes[id(x)] = total
            return total
        return 1

    return size(data, 0)


def check_size(data: Any, where: str) -> None:
    """Refuse data whose alias-expanded size passes :data:`MAX_NODES` (a YAML alias bomb)
    before anything converts, copies or prints it whole."""
    if expanded_size(data) > MAX_NODES:
        raise ConfigError(f"{where}: more than {MAX_NODES:,} values once YAML aliases are expanded "
                          "(an alias bomb?); a recipe is far smaller")


def yaml_load(text: str, where: str) -> Any:
    """Safe YAML (Python tags refused) with YAML 1.2 floats, size-checked."""
    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid safe YAML ({exc.__class__.__name__}: {short(str(exc))})") from None
    check_size(data, where)
    return data


def _plain_name(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    """A run name is one folder under output_dir: no separators, not `.`/`..`, not empty."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or os.sep in value or (os.altsep and os.altsep in value) or value.strip() != value):
        raise FieldError(attribute.name, "must be a plain folder name (no '/' or '\\', not '.' or '..', "
                                         f"not empty, no surrounding spaces), got {short(value)}")

# ---------------------------------------------------------------------------------------------
# The recipe


@attrs.define(kw_only=True)
class OptimConfig:
    """Optimizer and schedule, covering the papers' recipes."""

    name: str = attrs.field(default="adamw", validator=one_of("adamw", "sgd"))
    base_lr: float = attrs.field(default=1.5e-4, validator=in_range(0))  # per ref_batch samples
    lr: float | None = attrs.field(default=None, validator=in_range(0))  # absolute lr; overrides base_lr scaling
    ref_batch: int = attrs.field(default=256, validator=positive)  # lr = base_lr * effective batch / ref_batch (MFM uses 512)
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9  # SGD
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine weight-decay schedule (AttMask/iBOT)
    decay_tokens: bool = True  # the official MAE code decays cls/mask tokens (3-D params)
    warmup_epochs: float = attrs.field(default=40.0, validator=in_range(0))
    warmup_start_lr: float = attrs.field(default=0.0, validator=in_range(0))
    min_lr: float = attrs.field(default=0.0, validator=in_range(0))
    # min_lr and warmup_start_lr are per ref_batch like base_lr, scaled by effective batch / ref_batch
    # (MFM's main_mfm.py scales all three); false: absolute values
    scale_min_lr: bool = False
    # cosine: the cosine starts after the warm-up (MAE); timm_cosine: timm's CosineLRScheduler with
    # warmup_prefix=False, the warm-up counted inside the cosine (MFM/SimMIM) - mimkit.schedules
    schedule: str = attrs.field(default="cosine", validator=one_of("cosine", "timm_cosine"))
    clip_grad: float | None = attrs.field(default=None, validator=in_range(0, low_open=True))
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning)
    impl: str = attrs.field(default="auto", validator=one_of("auto", "fused", "foreach", "forloop"))  # auto = fused


@attrs.define(kw_only=True)
class TrainConfig:
    """The loop: length, batch, precision, logging and checkpoint cadence, failure policies."""

    epochs: float = attrs.field(default=1.0, validator=in_range(0, low_open=True))
    max_steps: int | None = attrs.field(default=None, validator=positive)  # optimizer steps; stops early when set
    batch_size: int = attrs.field(default=64, validator=positive)  # per process
    grad_accum: int = attrs.field(default=1, validator=positive)
    # YAML 1.1 reads a bare `no` as false: accept it as "no"
    mixed_precision: str | bool = attrs.field(default="no", converter=lambda v: "no" if v is False else v,
                                              validator=one_of("no", "bf16", "fp16", "auto"))  # auto: bf16 where native
    num_workers: int = attrs.field(default=0, validator=in_range(0))
    batched_data: bool = True  # the dataset's get_batch fast path when it has one (per-sample seeded)
    log_every: int = attrs.field(default=10, validator=positive)
    ckpt_every: int = attrs.field(default=500, validator=positive)  # optimizer steps
    keep_last: int = attrs.field(default=2, validator=in_range(1, why=" (the newest checkpoint is always kept)"))
    nonfinite: str = attrs.field(default="stop", validator=one_of("stop", "skip"))
    # torch.compile of the model: "auto" = on CUDA only (on the CPU it did not pay back within the demo)
    compile: bool | str = attrs.field(default="auto", validator=one_of(True, False, "auto"))
    attention: str = attrs.field(default="auto", validator=one_of("auto", "math", "flash", "efficient", "cudnn"))
    grad_checkpointing: bool = False
    deterministic: bool = True
    visualize: bool = True
    progress: bool = True
    knn_every: int | None = attrs.field(default=None, validator=positive)  # online k-NN probe every N steps
    knn_train: int = attrs.field(default=2000, validator=positive)  # bank: the first N un-augmented training items
    knn_test: int = attrs.field(default=1000, validator=positive)  # queries: the first N items of eval_data
    distributed: DistributedConfig = attrs.field(factory=DistributedConfig)  # ddp | fsdp (mimkit.distributed)


@attrs.define(kw_only=True)
class Recipe:
    """A whole run. ``data`` and ``model`` are component mappings validated at build time."""

    name: str = attrs.field(default="run", validator=_plain_name)  # the run folder: output_dir/name
    method: str | None = None
    seed: int = attrs.field(default=0, validator=in_range(0, 2**32 - 1))
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
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe file {p}: {exc}") from None
    data = yaml_load(text, f"{p}: recipe")
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
    return {f.name[: -len(".yaml")]: yaml_load(f.read_text(), f"{package}/{folder}/{f.name}")
            for f in files if f.name.endswith(".yaml")}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; the value is parsed as a YAML scalar."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. model.masker.ratio=0.9), got {item!r}")
        value = yaml_load(text, f"--set {key}")
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
    layer = {k: v for k, v in raw.items() if k != "method"}
    merged = deep_merge(base, layer)
    if "eval_data" not in layer and base.get("eval_data") is not None and other_source(base.get("data"), layer.get("data")):
        merged["eval_data"] = None  # the preset's evaluation data belongs to the preset's data
    merged["method"] = name
    return merged


def other_source(old: Any, new: Any) -> bool:
    """Whether the ``new`` data mapping of a recipe layer names another source than ``old``:
    a different ``name`` or ``root`` anywhere in it (a wrapper's ``base`` included)."""
    if not isinstance(new, Mapping):
        return new is not None and new != old
    old = old if isinstance(old, Mapping) else {}
    for key in ("name", "root"):
        if key in new and new[key] != old.get(key):
            return True
    return any(other_source(old.get(k), v) for k, v in new.items() if isinstance(v, Mapping))


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
        check_size(recipe, "recipe")  # before deepcopy/convert expand an alias bomb
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
    check_size(raw, "recipe")
    recipe_obj = structure(Recipe, raw, "")
    validate(recipe_obj, registry)
    if "data" in raw:  # a recipe without data (an importer's, a model-only one) keeps its model as written
        derive_geometry(recipe_obj, registry)
    return recipe_obj


def derive_geometry(recipe: Recipe, registry: Registry) -> None:
    """One source of truth for geometry: the data declares it (Config fields with
    ``geometry`` metadata: image size, channels, frames...), and every model field that
    ``follows`` it and ``eval_data``'s geometry fields take the data's values unless the recipe
    sets them; an explicit mismatch is a :class:`ConfigError` naming both keys. The derived
    values are written into the recipe (and so into every run's ``recipe.yaml``)."""
    geometry = declared_geometry("datasets", recipe.data, "data", registry)
    recipe.model = follow_geometry("models", recipe.model, "model", registry, geometry, default="masked")
    if recipe.eval_data is not None:
        recipe.eval_data = follow_geometry("datasets", recipe.eval_data, "eval_data", registry, geometry,
                                           meta_key="geometry")
    validate(recipe, registry)


def validate(recipe: Recipe, registry: Registry) -> None:
    """Validate every component spec of ``recipe`` (model, data, eval_data and their nested
    components) against its class's ``Config``; raises :class:`ConfigError` naming the key."""
    validate_component("models", recipe.model, "model", registry, default="masked")
    validate_component("datasets", recipe.data, "data", registry)
    if recipe.eval_data is not None:
        validate_component("datasets", recipe.eval_data, "eval_data", registry)


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved into every run folder)."""
    return yaml.dump(unstructure(recipe), Dumper=Dumper, sort_keys=False)
