"""FLIP for mimkit: masked image-text contrastive pretraining."""
from .model import FLIP, clip_loss, gather_features

__all__ = ["FLIP", "clip_loss", "gather_features"]
