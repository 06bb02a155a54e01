"""MRA (Xu et al., 2022) for mimkit: a frozen MAE as an attention-guided mask-and-reconstruct augmentation."""
from .augment import MaskReconstruct, attention_mask, mask_reconstruct_batch

__all__ = ["MaskReconstruct", "attention_mask", "mask_reconstruct_batch"]
