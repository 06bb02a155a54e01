"""mimkit-omnimae's hook implementations: the OmniMAE model, the mixture data source, presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .data import Mixture
from .model import OmniMAE

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"omnimae": OmniMAE}


@hookimpl
def mimkit_datasets():
    return {"mixture": Mixture}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_omnimae")
