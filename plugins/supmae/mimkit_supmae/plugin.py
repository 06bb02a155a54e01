"""mimkit-supmae's hooks: the ``visible_token_classification`` loss and SupMAE presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .head import VisibleTokenClassification

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_losses():
    return {"visible_token_classification": VisibleTokenClassification}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_supmae")


@hookimpl
def mimkit_importers():
    return {"supmae_official": import_official}
