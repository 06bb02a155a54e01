"""mimkit-igpt's hook implementations: the ``igpt`` model, its completions visualizer, the
``igpt_layers`` protocol and the presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .model import IGPT
from .probe import LayerSweep
from .visualize import Completions

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"igpt": IGPT}


@hookimpl
def mimkit_visualizers():
    return {"igpt_completions": Completions}


@hookimpl
def mimkit_protocols():
    return {"igpt_layers": LayerSweep}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_igpt")
