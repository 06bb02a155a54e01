"""mimkit-supmae's hooks: the ``visible_token_classification`` loss and SupMAE presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .head import VisibleTokenClassification

MIMKIT_API = HOOK_API_VERSION


@hookimpl
def mimkit_losses():
    return {"visible_token_classification": VisibleTokenClassification}


@hookimpl
def mimkit_methods():
    folder = resources.files("mimkit_supmae").joinpath("recipes")
    return {f.name[:-5]: yaml.safe_load(f.read_text()) for f in folder.iterdir() if f.name.endswith(".yaml")}
