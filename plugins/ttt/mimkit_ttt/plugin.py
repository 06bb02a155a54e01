"""mimkit-ttt's hook implementations: the ``ttt`` model, its presets and the ``ttt`` protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .model import TTT
from .protocol import TTTProtocol

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"ttt": TTT}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_ttt")


@hookimpl
def mimkit_protocols():
    return {"ttt": TTTProtocol}
