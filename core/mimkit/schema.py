"""The schema toolkit: strict structuring of mappings into attrs ``Config`` classes.

A leaf module (it imports only :mod:`mimkit.errors`): components use :func:`one_of` and
:class:`FieldError` in their configs, the resolver (:mod:`mimkit.config`) uses
:func:`structure`, and :func:`component` / :func:`validate_component` look component specs
``{name: ..., **options}`` up in a registry passed in by the caller. Every error names the key
path, the bad value and what is allowed.

A component's ``Config`` may hold the specs of sub-components it builds (the masked model's
``encoder``, a dataset wrapper's ``base``). It declares them in the field's metadata, so the
whole tree is validated before anything is built::

    encoder: dict = attrs.field(factory=lambda: {"name": "vit"}, metadata={"component": "encoders"})
    losses: dict = attrs.field(factory=dict, metadata={"components": "losses"})  # {term: spec}
    infonce: dict = attrs.field(factory=dict, metadata={"component": "losses", "default_name": "infonce"})
"""
from __future__ import annotations

import copy
import math
import reprlib
import types
import typing
from typing import Any, Mapping

import attrs
import cattrs
import cattrs.v

from .errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Bounded reprs: an error message never prints a huge (or alias-expanded) value whole

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxtuple, _repr.maxlevel = 80, 80, 6, 6, 6, 3


def short(value: Any) -> str:
    """``repr(value)`` cut to about 200 characters (nested containers elided with ``...``)."""
    text = _repr.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------------------
# A strict converter: no silent int(1.5) or bool("false").

converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(kind: type, accept: tuple[type, ...], reject: tuple[type, ...] = ()):
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, reject) or not isinstance(value, accept):
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__} {short(value)}")
        return kind(value)

    return hook


converter.register_structure_hook(int, _strict(int, (int,), (bool,)))
converter.register_structure_hook(float, _strict(float, (int, float), (bool,)))
converter.register_structure_hook(bool, _strict(bool, (bool,)))
converter.register_structure_hook(str, _strict(str, (str,)))
converter.register_structure_hook(Any, lambda v, _t: v)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _structure_union(value: Any, t: Any) -> Any:
    """Unions of plain types: None if allowed, else the first member type that accepts it."""
    members = typing.get_args(t)
    if value is None:
        if type(None) in members:
            return None
        raise ValueError("a value is required, got null")
    errors = []
    for m in members:
        if m is type(None):
            continue
        try:
            return converter.structure(value, m)
        except Exception as exc:  # try the next member
            errors.append(str(exc))
    names = " or ".join(getattr(m, "__name__", str(m)) for m in members if m is not type(None))
    raise ValueError(f"expected {names}, got {type(value).__name__} {short(value)}")


converter.register_structure_hook_func(_is_union, _structure_union)


def _check_keys(cls: type, data: Mapping, path: str) -> None:
    """Unknown and missing keys, recursively through nested attrs classes, named by path."""
    fields = {a.name: a for a in attrs.fields(attrs.resolve_types(cls))}
    extra = [k for k in data if k not in fields]
    if extra:
        raise ConfigError(f"unknown key {_join(path, str(extra[0]))!r}; allowed keys here: {', '.join(fields)}")
    missing = [n for n, a in fields.items() if a.default is attrs.NOTHING and n not in data]
    if missing:
        raise ConfigError(f"missing required key {_join(path, missing[0])!r}")
    for name, a in fields.items():
        if isinstance(a.type, type) and attrs.has(a.type) and isinstance(data.get(name), Mapping):
            _check_keys(a.type, data[name], _join(path, name))


def structure(cls: type, data: Any, path: str) -> Any:
    """Validate ``data`` into the attrs class ``cls``; errors name ``path.key`` and the choices."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'recipe'}: expected a mapping, got {type(data).__name__} {short(data)}")
    _check_keys(cls, data, path)
    try:
        return converter.structure(dict(data), cls)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc, path="$", format_exception=_format)
        first = messages[0] if messages else str(exc)
        msg, _, where = first.partition(" @ ")
        keys = [k for k in where.replace("$", "").replace("['", ".").replace("']", "").split(".") if k]
        field = _field_error(exc)
        if field is not None:  # an attrs validator failed inside the class: point at its field
            keys.append(field.field)
        value: Any = data
        for k in keys:
            value = value.get(k, "?") if isinstance(value, Mapping) else "?"
        raise ConfigError(f"invalid value {short(value)} for {_join(path, '.'.join(keys))!r}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value at {path or 'recipe'!r}: {exc}") from None


class FieldError(ValueError):
    """A validator failure that knows its field name (for the key path in the message)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _field_error(exc: BaseException) -> FieldError | None:
    if isinstance(exc, FieldError):
        return exc
    for sub in getattr(exc, "exceptions", ()):
        found = _field_error(sub)
        if found is not None:
            return found
    return None


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else (path or key)


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def one_of(*choices: str):
    """An attrs validator whose error lists the allowed values."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise FieldError(attribute.name, f"must be one of {list(choices)}, got {short(value)}")

    check.choices = choices  # type: ignore[attr-defined]  # read by the CLI for --help
    return check


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, why: str = ""):
    """An attrs validator for a number in [low, high] (ends open when asked; ``None`` passes:
    an optional field's default), finite; the error names the allowed range."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        bad = isinstance(value, float) and not math.isfinite(value)
        if low is not None:
            bad = bad or (value <= low if low_open else value < low)
        if high is not None:
            bad = bad or (value >= high if high_open else value > high)
        if bad:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
            allowed = " and ".join(x for x in (lo, hi) if x) or "finite"
            raise FieldError(attribute.name, f"must be {allowed}{why}, got {short(value)}")

    return check


def positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """An integer >= 1 (``None`` passes: an optional field's default)."""
    in_range(1)(_inst, attribute, value)


def component(kind: str, spec: Any, path: str, registry: Any, default: str | None = None) -> tuple[type, Any]:
    """Look up a component spec ``{name: ..., **options}`` -> (class, validated Config)."""
    if spec is None:
        spec = {}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'name', got {short(spec)}")
    name = spec.get("name", default)
    if name is None:
        names = ", ".join(registry.names(kind))
        raise ConfigError(f"missing required key '{path}.name'; registered {kind}: {names}")
    cls = registry.get(kind, name, where=path)
    cfg = structure(cls.Config, {k: v for k, v in spec.items() if k != "name"}, path)
    return cls, cfg


def sub_specs(cls: type, config: Any, path: str) -> list[tuple[str, Any, str, str | None]]:
    """The sub-component specs a validated ``config`` of component class ``cls`` declares:
    ``[(kind, spec, path, default name)]`` from field metadata ``component``/``components``."""
    out = []
    for a in attrs.fields(type(config)):
        kind, many = a.metadata.get("component"), a.metadata.get("components")
        value = getattr(config, a.name)
        if value is None or not (kind or many):
            continue
        where = _join(path, a.name)
        if many:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: expected a mapping of named {many} specs, got {short(value)}")
            out += [(many, spec, _join(where, str(k)), a.metadata.get("default_name")) for k, spec in value.items()]
        else:
            out.append((kind, value, where, a.metadata.get("default_name")))
    return out


def validate_component(kind: str, spec: Any, path: str, registry: Any, default: str | None = None) -> Any:
    """Validate a component spec and, recursively, every sub-component spec its ``Config``
    declares; returns the validated ``Config``. Nothing is built."""
    cls, cfg = component(kind, spec, path, registry, default)
    for sub_kind, sub_spec, sub_path, sub_default in sub_specs(cls, cfg, path):
        validate_component(sub_kind, sub_spec, sub_path, registry, sub_default)
    return cfg


# ---------------------------------------------------------------------------------------------
# Geometry: stated once by the data, followed by the model
#
# A data source declares its geometry in the metadata of its Config fields::
#
#     img_size: int = attrs.field(default=224, metadata={"geometry": "img_size"})
#     channels: int = attrs.field(default=3, metadata={"geometry": "channels"})
#
# and a component (encoder, target, decoder, ...) declares which of its Config fields follow it::
#
#     in_chans: int | None = attrs.field(default=None, metadata={"follows": "channels"})
#
# :func:`follow_geometry` fills every following field the recipe leaves unset with the data's
# value and refuses an explicit value that differs, naming both keys. The keys are free-form
# strings (``img_size``, ``channels``, ``num_frames``, an audio plugin's ``num_mel_bins``...).


def _same(a: Any, b: Any) -> bool:
    """Equal geometry values; an int equals a list/tuple of that int (``32`` == ``[32, 32]``)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (list, tuple)):
        a, b = b, a
    if isinstance(b, (list, tuple)):
        return all(_same(a, y) for y in b)
    return a == b


def _as_spec(spec: Any) -> dict:
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {"name": spec}
    return dict(spec) if isinstance(spec, Mapping) else spec


def declared_geometry(kind: str, spec: Any, path: str, registry: Any, default: str | None = None) -> dict[str, tuple[Any, str]]:
    """The geometry a data spec declares: ``{key: (value, key path)}`` from its Config fields'
    ``geometry`` metadata (defaults included), over that of the datasets it wraps."""
    cls, cfg = component(kind, spec, path, registry, default)
    out: dict[str, tuple[Any, str]] = {}
    for sub_kind, sub_spec, sub_path, sub_default in sub_specs(cls, cfg, path):
        if sub_kind == kind:
            out.update(declared_geometry(sub_kind, sub_spec, sub_path, registry, sub_default))
    for a in attrs.fields(type(cfg)):
        key = a.metadata.get("geometry")
        if key and getattr(cfg, a.name) is not None:
            out[key] = (getattr(cfg, a.name), _join(path, a.name))
    return out


def follow_geometry(kind: str, spec: Any, path: str, registry: Any, geometry: Mapping[str, tuple[Any, str]],
                    default: str | None = None, meta_key: str = "follows") -> Any:
    """``spec`` with every field that follows a geometry key (Config metadata ``meta_key``) set
    to the data's value where the recipe leaves it unset, recursively through sub-component
    specs; an explicit different value is a :class:`ConfigError` naming both keys."""
    spec = _as_spec(spec)
    if not isinstance(spec, dict):
        return spec  # component() reports the bad spec
    cls, cfg = component(kind, spec, path, registry, default)
    for a in attrs.fields(type(cfg)):
        key = a.metadata.get(meta_key)
        if not key or key not in geometry:
            continue
        value, source = geometry[key]
        where = _join(path, a.name)
        if spec.get(a.name) is None:
            spec[a.name] = copy.deepcopy(value)
        elif not _same(spec[a.name], value):
            raise ConfigError(
                f"{where}={spec[a.name]!r} does not match {source}={value!r}: the model follows the data. "
                f"Leave {where} out (it is derived from {source}) or set both to the same value")
    for sub in attrs.fields(type(cfg)):
        sub_kind, many = sub.metadata.get("component"), sub.metadata.get("components")
        if not (sub_kind or many):
            continue
        value = spec.get(sub.name, getattr(cfg, sub.name))
        if value is None:
            continue
        where = _join(path, sub.name)
        sub_default = sub.metadata.get("default_name")
        if many:
            if isinstance(value, Mapping):
                new_many = {k: follow_geometry(many, copy.deepcopy(v), _join(where, str(k)), registry, geometry,
                                               sub_default, meta_key) for k, v in value.items()}
                if sub.name in spec or new_many != {k: _as_spec(v) for k, v in value.items()}:
                    spec[sub.name] = new_many
        else:
            new = follow_geometry(sub_kind, copy.deepcopy(value), where, registry, geometry, sub_default, meta_key)
            if sub.name in spec or new != _as_spec(value):
                spec[sub.name] = new
    return spec
