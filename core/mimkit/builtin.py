"""The core's built-in plugin: generic components many methods share (all in
:mod:`mimkit.components`) and the evaluation protocols, registered through the same hooks as
any plugin (as pytest registers its own)."""
from __future__ import annotations

from .components.losses import L1, Cosine, CrossEntropy, MaskedMSE
from .components.masking import RandomMasker
from .components.targets import PixelTarget
from .components.teachers import EMATeacher, FrozenTeacher
from .components.vit import ViTEncoder
from .components.datasets import FashionMNIST, ImageFolder
from .components.shards import Shards
from .evaluation import PROTOCOLS
from .hookspecs import HOOK_API_VERSION, hookimpl
from .components.masked import MaskedModel
from .components.visualizers import ReconstructionGrid

MIMKIT_API = HOOK_API_VERSION


@hookimpl
def mimkit_encoders():
    return {"vit": ViTEncoder}


@hookimpl
def mimkit_maskers():
    return {"random": RandomMasker}


@hookimpl
def mimkit_targets():
    return {"pixels": PixelTarget}


@hookimpl
def mimkit_losses():
    return {"masked_mse": MaskedMSE, "l1": L1, "cosine": Cosine, "cross_entropy": CrossEntropy}


@hookimpl
def mimkit_teachers():
    return {"ema": EMATeacher, "frozen": FrozenTeacher}


@hookimpl
def mimkit_models():
    return {"masked": MaskedModel}


@hookimpl
def mimkit_datasets():
    return {"fashion_mnist": FashionMNIST, "image_folder": ImageFolder, "shards": Shards}


@hookimpl
def mimkit_visualizers():
    return {"reconstruction": ReconstructionGrid}


@hookimpl
def mimkit_protocols():
    return dict(PROTOCOLS)  # knn, linprobe, finetune
