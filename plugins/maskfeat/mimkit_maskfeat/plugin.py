"""mimkit-maskfeat's hook implementations: the ``hog`` target, ``block`` and ``cube`` maskers, ``linear``
decoder, ``maskfeat_vit`` and ``mvit_video`` encoders, the MaskFeat presets and the SlowFast checkpoint importer."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .cube import CubeMasker
from .decoder import LinearDecoder
from .hog import HOGTarget
from .masking import BlockMasker
from .mvit import MViTVideoEncoder
from .vit import MaskFeatViTEncoder

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)



@hookimpl
def mimkit_targets():
    return {"hog": HOGTarget}


@hookimpl
def mimkit_maskers():
    return {"block": BlockMasker, "cube": CubeMasker}


@hookimpl
def mimkit_encoders():
    return {"maskfeat_vit": MaskFeatViTEncoder, "mvit_video": MViTVideoEncoder}


@hookimpl
def mimkit_decoders():
    return {"linear": LinearDecoder}


@hookimpl
def mimkit_importers():
    return {"maskfeat_slowfast": import_official}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_maskfeat")
