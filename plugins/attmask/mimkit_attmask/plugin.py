"""mimkit-attmask's hook implementations: the ``attention_guided`` masker, the ``ibot`` model
(AttMask's distillation objective) and the AttMask presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .ibot import IBOTModel
from .masking import AttentionGuidedMasker

MIMKIT_API = HOOK_API_VERSION



@hookimpl
def mimkit_maskers():
    return {"attention_guided": AttentionGuidedMasker}


@hookimpl
def mimkit_models():
    return {"ibot": IBOTModel}


@hookimpl
def mimkit_methods():
    return package_presets("mimkit_attmask")
