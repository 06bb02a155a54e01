"""MaskFeat (Wei et al., CVPR 2022) for mimkit: HOG target, block masking, linear head, SlowFast checkpoints."""
from .convert import convert_mvit, convert_official, import_official, recipe_for, recipe_for_mvit
from .cube import CubeMasker, cube_mask, upsample_mask
from .decoder import LinearDecoder
from .hog import HOGTarget, hog_cells, hog_per_patch
from .masking import BlockMasker, block_mask
from .mvit import MViTVideoEncoder, round_width

__all__ = ["HOGTarget", "BlockMasker", "LinearDecoder", "hog_cells", "hog_per_patch", "block_mask", "CubeMasker", "cube_mask",
           "upsample_mask", "convert_official", "import_official", "recipe_for",
           "convert_mvit", "recipe_for_mvit", "MViTVideoEncoder", "round_width"]
