"""The plugin API: everything a mimkit plugin may import from the core, in one module.

Plugins import from here (``from mimkit.plugin_api import Mask, hookimpl, ...``) and from
nowhere else in the core, so the core can reorganize its modules without breaking them.
What is listed in ``__all__`` is the contract; it changes only with :data:`HOOK_API_VERSION`.

A plugin module declares the hook-API version it was written for as a literal::

    MIMKIT_API = 2   # not HOOK_API_VERSION: the check must compare two different numbers
"""
from __future__ import annotations

from .api import build, load, load_state  # protocols and importers load runs, build models, load weights
from .checkpoint import read_hf_folder
from .components import (
    BuildEnv, Dataset, Decoder, Encoder, EvalProtocol, Exporter, Loss, LossConfig, Masker, Target, Teacher, Visualizer,
    init_xavier_,
)
from .config import package_presets
from .components.datasets import FashionMNIST, ImageFolder
from .components.losses import gather_with_grad
from .data import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD, SeededDataset,
    seed_for,
)
from .errors import CheckpointError, ConfigError, DataError, MimkitError, PluginError
from .evaluation import (
    LinearProbe, classifier_from_encoder, cosine_lr, encoder_features, eval_datasets, eval_encoder, head_subset,
    load_source, select_train, topk_accuracy, train_linear_probe,
)
from .components.targets import PixelTarget
from .components.teachers import EMATeacher, FrozenTeacher, cls_attention, encoder_outputs
from .components.visualizers import pixel_predictions
from .components.vit import ViTEncoder, require_visible_only_vit
from .geometry import (
    gather_tokens, grid_shape, normalize_patches, num_keep_for, patch_stats, patchify, restore_tokens, sincos_1d,
    sincos_2d, sincos_3d, unpatchify,
)
from .hookspecs import HOOK_API_VERSION, hookimpl
from .components.masked import MaskedModel, explicit_mask
from .components.masking import beit_block_mask
from .model import MethodModel, step_noise
from .plugins import registry
from .schema import FieldError, component, one_of
from .types import Context, Mask, Outputs
from .viz import pyplot, save_figure

build_model = build  # a recipe (file, mapping, Recipe) -> a freshly initialized model

__all__ = [
    # hooks and versions
    "hookimpl", "HOOK_API_VERSION", "registry",
    # data types every component speaks
    "Mask", "Context", "Outputs",
    # building components
    "BuildEnv", "Masker", "Loss", "LossConfig", "MethodModel", "MaskedModel", "explicit_mask", "component", "one_of",
    "FieldError", "package_presets", "init_xavier_", "step_noise", "gather_with_grad", "beit_block_mask",
    # the contracts of the other kinds (typing.Protocol: structural, no need to inherit)
    "Encoder", "Decoder", "Target", "Teacher", "Visualizer", "Dataset", "EvalProtocol", "Exporter",
    # token geometry
    "patchify", "unpatchify", "gather_tokens", "restore_tokens", "sincos_1d", "sincos_2d", "sincos_3d",
    "patch_stats", "normalize_patches", "num_keep_for", "grid_shape",
    # built-in components plugins extend or reuse
    "ViTEncoder", "require_visible_only_vit", "PixelTarget", "EMATeacher", "FrozenTeacher", "cls_attention", "encoder_outputs",
    # pictures
    "pyplot", "save_figure", "pixel_predictions",
    # data
    "SeededDataset", "FashionMNIST", "ImageFolder", "seed_for", "IMAGENET_MEAN", "IMAGENET_STD",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_CLASSES",
    # loading models (protocols)
    "load", "build", "build_model", "load_state", "read_hf_folder",
    # evaluation pieces for plugin protocols (layer sweeps, test-time training, MRA fine-tuning)
    "LinearProbe", "classifier_from_encoder", "cosine_lr", "eval_datasets", "head_subset", "load_source",
    "select_train", "topk_accuracy", "train_linear_probe", "eval_encoder", "encoder_features",
    # errors
    "MimkitError", "ConfigError", "DataError", "CheckpointError", "PluginError",
]
