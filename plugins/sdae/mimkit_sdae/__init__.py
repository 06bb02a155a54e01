"""SdAE for mimkit: the ``sdae`` model (multi-fold EMA teacher, token-standardized feature targets)."""
from .model import SdAE, fold_mask, multi_fold_ids, order_like, sdae_cosine_loss, standardize_tokens

__all__ = ["SdAE", "multi_fold_ids", "fold_mask", "order_like", "standardize_tokens", "sdae_cosine_loss"]
