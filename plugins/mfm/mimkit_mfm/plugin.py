"""mimkit-mfm's hook implementations: the ``frequency`` masker and target, the
``frequency_distance`` loss, the ``linear_pixelshuffle`` decoder, the ``resnet`` encoder and
the MFM presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .decoder import LinearPixelShuffleDecoder
from .frequency import FrequencyDistance, FrequencyMasker, FrequencyTarget
from .resnet import ResNetEncoder

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_mfm").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


@hookimpl
def mimkit_maskers():
    return {"frequency": FrequencyMasker}


@hookimpl
def mimkit_targets():
    return {"frequency": FrequencyTarget}


@hookimpl
def mimkit_losses():
    return {"frequency_distance": FrequencyDistance}


@hookimpl
def mimkit_decoders():
    return {"linear_pixelshuffle": LinearPixelShuffleDecoder}


@hookimpl
def mimkit_encoders():
    return {"resnet": ResNetEncoder}


@hookimpl
def mimkit_methods():
    return _presets()
