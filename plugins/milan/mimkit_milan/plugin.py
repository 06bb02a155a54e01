"""mimkit-milan's hook implementations: the ``milan`` model, the ``prompting`` decoder, the
``flip_image`` and ``hf_clip`` teachers and the MILAN presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .decoder import PromptingDecoder
from .model import MILAN
from .teachers import CLIPTeacher, FLIPImageTeacher

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"milan": MILAN}


@hookimpl
def mimkit_decoders():
    return {"prompting": PromptingDecoder}


@hookimpl
def mimkit_teachers():
    return {"flip_image": FLIPImageTeacher, "hf_clip": CLIPTeacher}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_milan")
