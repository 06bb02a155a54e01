"""mimkit-ttt-mae's hook implementations: the ``ttt_mae`` protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .protocol import TTTMAEProtocol

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_protocols():
    return {"ttt_mae": TTTMAEProtocol}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_ttt_mae")
