"""mimkit-contrastive's hook implementations: the ``infonce`` loss, the ``two_views`` dataset,
the ``cmae`` and ``macrl`` models and their presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .infonce import InfoNCE
from .models import CMAE, MACRL
from .views import TwoViews

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_contrastive").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


@hookimpl
def mimkit_losses():
    return {"infonce": InfoNCE}


@hookimpl
def mimkit_datasets():
    return {"two_views": TwoViews}


@hookimpl
def mimkit_models():
    return {"cmae": CMAE, "macrl": MACRL}


@hookimpl
def mimkit_methods():
    return _presets()
