"""mimkit-contrastive's hook implementations: the ``infonce`` loss, the ``two_views`` dataset,
the ``cmae`` and ``macrl`` models and their presets, the official CMAE checkpoint importer."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import PICKLED, import_official
from .infonce import InfoNCE
from .masking import BlockMasker
from .models import CMAE, MACRL
from .views import TwoViews

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)



@hookimpl
def mimkit_losses():
    return {"infonce": InfoNCE}


@hookimpl
def mimkit_maskers():
    return {"cmae_block": BlockMasker}


@hookimpl
def mimkit_datasets():
    return {"two_views": TwoViews}


@hookimpl
def mimkit_models():
    return {"cmae": CMAE, "macrl": MACRL}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_contrastive")


@hookimpl
def mimkit_importers():
    return {"cmae_official": import_official}


@hookimpl
def mimkit_pickled():
    return PICKLED
