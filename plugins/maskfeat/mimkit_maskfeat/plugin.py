"""mimkit-maskfeat's hook implementations: the ``hog`` target, ``block`` masker, ``linear``
decoder and the MaskFeat presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .decoder import LinearDecoder
from .hog import HOGTarget
from .masking import BlockMasker

MIMKIT_API = HOOK_API_VERSION



@hookimpl
def mimkit_targets():
    return {"hog": HOGTarget}


@hookimpl
def mimkit_maskers():
    return {"block": BlockMasker}


@hookimpl
def mimkit_decoders():
    return {"linear": LinearDecoder}


@hookimpl
def mimkit_methods():
    return package_presets("mimkit_maskfeat")
