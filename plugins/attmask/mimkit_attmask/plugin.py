"""mimkit-attmask's hook implementations: the ``attention_guided`` masker, the ``ibot`` model
(AttMask's distillation objective) and the AttMask presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .ibot import IBOTModel
from .masking import AttentionGuidedMasker

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_attmask").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


@hookimpl
def mimkit_maskers():
    return {"attention_guided": AttentionGuidedMasker}


@hookimpl
def mimkit_models():
    return {"ibot": IBOTModel}


@hookimpl
def mimkit_methods():
    return _presets()
