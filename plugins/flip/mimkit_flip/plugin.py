"""mimkit-flip's hook implementations: the ``flip`` model and the FLIP presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .model import FLIP

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"flip": FLIP}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_flip")
