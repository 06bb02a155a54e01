"""AttMask (Kakogeorgiou et al., ECCV 2022) for mimkit: attention-guided masking and the iBOT
distillation objective it was published with."""
from .convert import convert_official, recipe_for
from .ibot import IBOTHead, IBOTLoss, IBOTModel, teacher_temp_at
from .ibot_masking import IBOTBlockMasker, IBOTRandMasker, draw_pred_ratio, ibot_block_mask, ibot_rand_mask
from .masking import AttentionGuidedMasker, mask_from_hidden, topk_mask

__all__ = ["AttentionGuidedMasker", "IBOTBlockMasker", "IBOTRandMasker", "draw_pred_ratio", "ibot_block_mask", "ibot_rand_mask", "convert_official", "recipe_for", "IBOTHead", "IBOTLoss", "IBOTModel", "mask_from_hidden", "teacher_temp_at", "topk_mask"]
