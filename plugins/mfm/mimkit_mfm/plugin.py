"""mimkit-mfm's hook implementations: the ``frequency`` masker and target, the
``frequency_distance`` loss, the ``linear_pixelshuffle`` decoder, the ``resnet`` encoder and
the MFM presets, the importer of official Jiahao000/MFM checkpoints."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import PICKLED, import_official
from .decoder import LinearPixelShuffleDecoder
from .frequency import FrequencyDistance, FrequencyMasker, FrequencyTarget
from .resnet import ResNetEncoder
from .vit import MFMViTEncoder

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)

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
    return {"resnet": ResNetEncoder, "mfm_vit": MFMViTEncoder}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_mfm")


@hookimpl
def mimkit_importers():
    return {"mfm_official": import_official}


@hookimpl
def mimkit_pickled():
    return PICKLED
