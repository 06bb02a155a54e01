"""mimkit-mae's hook implementations: the ``mae`` decoder, MAE presets, official import."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .decoder import MAEDecoder
from .hf import EXPORTER, import_hf

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)



@hookimpl
def mimkit_decoders():
    return {"mae": MAEDecoder}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_mae")


@hookimpl
def mimkit_importers():
    return {"mae_official": import_official, "vit_mae_hf": import_hf}


@hookimpl
def mimkit_exporters():
    return {"vit_mae_hf": EXPORTER}

