"""mimkit-text's hook implementations: caption datasets and the ``zeroshot`` protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl

from .data import CaptionedFashionMNIST, ImageTextFolder, NotoEmoji, TuxPaintStamps
from .zeroshot import ZeroShot

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_datasets():
    return {"fashion_mnist_captions": CaptionedFashionMNIST, "image_text_folder": ImageTextFolder,
            "tuxpaint_stamps": TuxPaintStamps, "noto_emoji": NotoEmoji}


@hookimpl
def mimkit_protocols():
    return {"zeroshot": ZeroShot}
