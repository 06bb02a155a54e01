"""mimkit-mra's hook implementations: the ``mra_finetune`` protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .protocol import MRAFinetune

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_protocols():
    return {"mra_finetune": MRAFinetune}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_mra")
