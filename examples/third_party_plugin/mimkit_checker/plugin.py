"""mimkit-checker's hook implementations."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .masking import CheckerMasker

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_maskers():
    return {"checker": CheckerMasker}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_checker")
