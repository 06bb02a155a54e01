"""mimkit-mae's hook implementations: the ``mae`` decoder, MAE presets, official import."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .convert import import_official
from .decoder import MAEDecoder

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_mae").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


@hookimpl
def mimkit_decoders():
    return {"mae": MAEDecoder}


@hookimpl
def mimkit_methods():
    return _presets()


@hookimpl
def mimkit_importers():
    return {"mae_official": import_official}
