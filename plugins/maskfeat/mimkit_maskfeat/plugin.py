"""mimkit-maskfeat's hook implementations: the ``hog`` target, ``block`` masker, ``linear``
decoder and the MaskFeat presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .decoder import LinearDecoder
from .hog import HOGTarget
from .masking import BlockMasker

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_maskfeat").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


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
    return _presets()
