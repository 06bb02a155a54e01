"""mimkit-sdae's hook implementations: the ``sdae`` model and the SdAE presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .model import SdAE

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"sdae": SdAE}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_sdae")
