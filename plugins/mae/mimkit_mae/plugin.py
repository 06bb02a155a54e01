"""mimkit-mae's hook implementations: the ``mae`` decoder, MAE presets, official import."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .convert import import_official
from .decoder import MAEDecoder

MIMKIT_API = HOOK_API_VERSION



@hookimpl
def mimkit_decoders():
    return {"mae": MAEDecoder}


@hookimpl
def mimkit_methods():
    return package_presets("mimkit_mae")


@hookimpl
def mimkit_importers():
    return {"mae_official": import_official}
