"""mimkit-checker's hook implementations."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .masking import CheckerMasker

MIMKIT_API = HOOK_API_VERSION  # the hook API this plugin was written for


@hookimpl
def mimkit_maskers():
    return {"checker": CheckerMasker}


@hookimpl
def mimkit_methods():
    f = resources.files("mimkit_checker").joinpath("recipes", "checker_tiny.yaml")
    return {"checker_tiny": yaml.safe_load(f.read_text())}
