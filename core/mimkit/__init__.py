"""mimkit: masked modeling (MAE and the methods that grew from it) as a small core + plugins.

Python first: :func:`train`, :func:`build`, :func:`load`; the ``mim`` CLI sits on top.
"""
from __future__ import annotations

from typing import Any

from .api import build, load
from .config import Recipe, resolve
from .errors import CheckpointError, ConfigError, DataError, MimkitError, PluginError
from .hookspecs import HOOK_API_VERSION, hookimpl
from .types import Context, Mask, Outputs

__version__ = "0.1.0"


def train(recipe: Any, overrides: list[str] | None = None, resume: bool = False, overwrite: bool = False,
          allow_optim_change: bool = False):
    """Pretrain a recipe (path, mapping or Recipe) under Accelerate; returns the run folder.
    ``allow_optim_change`` lets a resumed run change ``optim.*`` (recorded in history.jsonl)."""
    from .trainer import train as _train

    return _train(recipe, overrides=overrides, resume=resume, overwrite=overwrite,
                  allow_optim_change=allow_optim_change)


__all__ = [
    "train", "build", "load", "resolve", "Recipe", "Mask", "Context", "Outputs", "hookimpl",
    "HOOK_API_VERSION", "MimkitError", "ConfigError", "PluginError", "DataError", "CheckpointError",
]
