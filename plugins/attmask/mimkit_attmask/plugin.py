"""mimkit-attmask's hook implementations: the ``attention_guided`` masker, iBOT's own
``ibot_block``/``ibot_rand`` maskers, the ``ibot`` model
(AttMask's distillation objective), the importer of official iBOT/AttMask checkpoints and the
AttMask presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .ibot import IBOTModel
from .ibot_masking import IBOTBlockMasker, IBOTRandMasker
from .masking import AttentionGuidedMasker

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_maskers():
    return {"attention_guided": AttentionGuidedMasker, "ibot_block": IBOTBlockMasker, "ibot_rand": IBOTRandMasker}


@hookimpl
def mimkit_models():
    return {"ibot": IBOTModel}


@hookimpl
def mimkit_importers():
    return {"ibot_official": import_official}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_attmask")
