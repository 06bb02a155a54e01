"""BootMAE for mimkit: the ``bootmae`` model, ``target_aware`` decoder and ``bootmae_block`` masker."""
from .decoder import TargetAwareDecoder
from .masking import BootMAEBlockMasker
from .model import BootMAE, block_center_weights, feature_ramp, weighted_token_mse

__all__ = ["BootMAE", "TargetAwareDecoder", "BootMAEBlockMasker", "block_center_weights", "feature_ramp",
           "weighted_token_mse"]
