"""mimkit-contrastive's hook implementations: the ``infonce`` loss, the ``two_views`` dataset,
the ``cmae`` and ``macrl`` models and their presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .infonce import InfoNCE
from .models import CMAE, MACRL
from .views import TwoViews

MIMKIT_API = HOOK_API_VERSION



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
    return package_presets("mimkit_contrastive")
