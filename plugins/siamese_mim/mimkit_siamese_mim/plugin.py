"""mimkit-siamese-mim's hook implementations: the ``siamese_mim`` model, its presets and the
``occlusion`` analysis protocol (``mim analyze occlusion RUN...``)."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .model import SiameseMIM
from .occlusion import OcclusionInvariance

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"siamese_mim": SiameseMIM}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_siamese_mim")


@hookimpl
def mimkit_protocols():
    return {"occlusion": OcclusionInvariance}
