"""mimkit-omnimae: OmniMAE (Girdhar et al., CVPR 2023) as a mimkit plugin: one ViT pretrained
by masked autoencoding on images and videos together.

Components: model ``omnimae`` (whole-method model), data source ``mixture``; presets
``omnimae_vit_base_in1k_ssv2`` and ``omnimae_tiny_fmnist_clips``.
"""
from .data import Mixture
from .model import NoiseSource, OmniMAE, pad_im2video

__all__ = ["Mixture", "OmniMAE", "NoiseSource", "pad_im2video"]
