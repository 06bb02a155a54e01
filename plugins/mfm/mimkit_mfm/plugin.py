"""mimkit-mfm's hook implementations: the ``frequency`` masker and target, the
``frequency_distance`` loss, the ``linear_pixelshuffle`` decoder, the ``resnet`` encoder and
the MFM presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .decoder import LinearPixelShuffleDecoder
from .frequency import FrequencyDistance, FrequencyMasker, FrequencyTarget
from .resnet import ResNetEncoder

MIMKIT_API = HOOK_API_VERSION



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
    return package_presets("mimkit_mfm")
