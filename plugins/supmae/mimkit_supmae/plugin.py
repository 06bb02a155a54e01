"""mimkit-supmae's hooks: the ``visible_token_classification`` loss and SupMAE presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .head import VisibleTokenClassification

MIMKIT_API = HOOK_API_VERSION


@hookimpl
def mimkit_losses():
    return {"visible_token_classification": VisibleTokenClassification}


@hookimpl
def mimkit_methods():
    return package_presets("mimkit_supmae")
