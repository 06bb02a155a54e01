"""mimkit-audiomae's hook implementations."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .decoder import AudioMAEDecoder
from .encoder import AudioViTEncoder
from .finetune import AudioFinetune
from .masking import TimeFrequencyMasker
from .target import FbankPatchTarget
from .visualize import SpectrogramGrid

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_encoders():
    return {"audio_vit": AudioViTEncoder}


@hookimpl
def mimkit_decoders():
    return {"audiomae": AudioMAEDecoder}


@hookimpl
def mimkit_maskers():
    return {"time_freq": TimeFrequencyMasker}


@hookimpl
def mimkit_targets():
    return {"fbank_patches": FbankPatchTarget}


@hookimpl
def mimkit_visualizers():
    return {"spectrogram": SpectrogramGrid}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_audiomae")


@hookimpl
def mimkit_importers():
    return {"audiomae_official": import_official}


@hookimpl
def mimkit_protocols():
    return {"audio_finetune": AudioFinetune}
