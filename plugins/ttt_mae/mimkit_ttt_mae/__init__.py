"""TTT-MAE (Gandelsman, Sun et al., NeurIPS 2022) for mimkit: heads on a frozen MAE encoder and
per-image test-time training with the MAE loss, one image at a time or many at once."""
from .adapt import adapt_batched, adapt_loop, auto_chunk, mae_loss, mask_noise
from .stacked import StackedViT, supports
from .heads import LinearHead, ViTHead, build_head, encoder_tokens, train_head

__all__ = ["adapt_batched", "adapt_loop", "auto_chunk", "mae_loss", "mask_noise", "LinearHead", "ViTHead", "build_head",
           "encoder_tokens", "train_head", "StackedViT", "supports"]
