"""Plugin discovery and the component registry.

Entry points of the group ``mimkit`` are loaded one by one, each inside its own try/except
(pluggy's ``load_setuptools_entrypoints`` stops at the first failure and silently skips
repeated names). A plugin that fails is recorded as broken with its error; the others work.
``MIMKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the core's built-in plugin.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from types import ModuleType
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError

KINDS = (
    "maskers", "targets", "encoders", "decoders", "losses", "teachers", "models",
    "presets", "datasets", "visualizers", "importers", "protocols", "exporters", "pickled",
)
DISABLE_ENV = "MIMKIT_DISABLE_PLUGIN_AUTOLOAD"
#: The core's own plugin, loaded by name like any other (it sits above the registry: its
#: components and protocols may use the whole core).
BUILTIN_PLUGIN = "mimkit.builtin"


@attrs.define
class PluginInfo:
    """One plugin as ``mim plugins`` shows it."""

    name: str
    version: str
    module: str
    components: dict[str, list[str]] = attrs.field(factory=dict)
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None


@attrs.define
class Registry:
    """Every registered component by kind and name, with the plugin that provided it."""

    components: dict[str, dict[str, Any]] = attrs.field(factory=lambda: {k: {} for k in KINDS})
    providers: dict[str, dict[str, str]] = attrs.field(factory=lambda: {k: {} for k in KINDS})
    plugins: list[PluginInfo] = attrs.field(factory=list)
    manager: pluggy.PluginManager | None = None

    def get(self, kind: str, name: str, where: str = "") -> Any:
        """The component ``name`` of ``kind``; an unknown name is a ConfigError listing the
        registered names and which plugin provides each."""
        table = self.components[kind]
        if not isinstance(name, str) or name not in table:
            options = ", ".join(f"{n} ({self.providers[kind][n]})" for n in sorted(table)) or "none"
            at = f" at {where}" if where else ""
            raise ConfigError(f"unknown {kind[:-1]} {name!r}{at}; registered: {options}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def _make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _check_api(module: ModuleType, name: str) -> None:
    api = getattr(module, "MIMKIT_API", None)
    if api is None:
        raise PluginError(f"plugin {name!r} does not declare MIMKIT_API (the hook-API version it targets)")
    if api != hookspecs.HOOK_API_VERSION:
        raise PluginError(
            f"plugin {name!r} was written for hook API {api!r}, this mimkit provides {hookspecs.HOOK_API_VERSION}: "
            f"install a release of the plugin made for this mimkit, or port it "
            f"({hookspecs.API_CHANGES.get(hookspecs.HOOK_API_VERSION, 'see mimkit.hookspecs')}) and set "
            f"MIMKIT_API = {hookspecs.HOOK_API_VERSION}"
        )


def _collect(module: ModuleType, plugin: str, registry: Registry) -> dict[str, list[str]]:
    """Call each registration hook of one plugin and merge its results into ``registry``.

    Validates everything before merging, so a faulty plugin leaves the registry untouched.
    """
    found: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        fn = getattr(module, f"mimkit_{kind}", None)
        if fn is None:
            continue
        result = fn()
        if result is None:
            continue
        if not hasattr(result, "items"):
            raise PluginError(f"plugin {plugin!r}: hook mimkit_{kind} returned {type(result).__name__}, expected a mapping")
        for cname, obj in result.items():
            if not isinstance(cname, str):
                raise PluginError(f"plugin {plugin!r}: mimkit_{kind} registered a non-string name {cname!r}")
            _check_component(kind, cname, obj, plugin)
            if cname in registry.components[kind]:
                other = registry.providers[kind][cname]
                raise PluginError(
                    f"{kind[:-1]} {cname!r} is registered by two plugins: {other!r} and {plugin!r}"
                )
        found[kind] = dict(result)
    for kind, table in found.items():
        for cname, obj in table.items():
            registry.components[kind][cname] = obj
            registry.providers[kind][cname] = plugin
    return {k: sorted(v) for k, v in found.items()}


def _check_component(kind: str, name: str, obj: Any, plugin: str) -> None:
    """The protocol checks a registry can do without building anything."""
    if kind == "presets":
        if not hasattr(obj, "items"):
            raise PluginError(f"plugin {plugin!r}: preset {name!r} is {type(obj).__name__}, expected a mapping")
        return
    if kind == "importers":
        if not callable(obj):
            raise PluginError(f"plugin {plugin!r}: importer {name!r} is not callable")
        return
    if kind == "pickled":
        if "." not in name or not callable(obj):
            raise PluginError(f"plugin {plugin!r}: pickled name {name!r} must be a dotted 'module.Class' path "
                              f"mapped to a callable stand-in, got {obj!r}")
        return
    if kind == "exporters":
        if not (isinstance(getattr(obj, "format", None), str) and callable(getattr(obj, "check", None))
                and callable(getattr(obj, "write", None))):
            raise PluginError(f"plugin {plugin!r}: exporter {name!r} is {obj!r}, expected an Exporter "
                              "(format, check, write)")
        return
    if not isinstance(obj, type):
        raise PluginError(f"plugin {plugin!r}: {kind[:-1]} {name!r} is {obj!r}, expected a class")
    cfg = getattr(obj, "Config", None)
    if cfg is None or not attrs.has(cfg):
        raise PluginError(f"plugin {plugin!r}: {kind[:-1]} {name!r} has no attrs `Config` class")


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=hookspecs.PROJECT)


def build_registry(autoload: bool | None = None) -> Registry:
    """Load the built-in plugin, then every entry point of the group ``mimkit``."""
    builtin = importlib.import_module(BUILTIN_PLUGIN)
    registry = Registry(manager=_make_manager())
    registry.plugins.append(PluginInfo("mimkit (builtin)", _version("mimkit"), builtin.__name__))
    registry.plugins[0].components = _collect(builtin, "mimkit (builtin)", registry)
    registry.manager.register(builtin, "builtin")
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").lower() not in ("1", "true", "yes")
    if not autoload:
        return registry
    seen: set[str] = set()
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        info = PluginInfo(ep.name, ep.dist.version if ep.dist is not None else "?", ep.value)
        registry.plugins.append(info)
        try:
            if ep.name in seen:
                raise PluginError(f"two installed plugins use the entry-point name {ep.name!r} (second: {dist})")
            seen.add(ep.name)
            module = ep.load()
            _check_api(module, ep.name)
            registry.manager.register(module, ep.name)  # validates hook names and signatures
            try:
                registry.manager.check_pending()
                info.components = _collect(module, ep.name, registry)
            except Exception:
                registry.manager.unregister(module)
                raise
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            info.components = {}
            if os.environ.get("MIMKIT_DEBUG_PLUGINS"):
                traceback.print_exc()
    return registry


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry (tests, or after installing a plugin in a live session)."""
    global _REGISTRY
    _REGISTRY = None
