"""The siamese view of MIM for mimkit: the ``siamese_mim`` model and the ``occlusion`` analysis."""
from .model import SiameseMIM, complementary_mask, token_infonce
from .occlusion import OcclusionInvariance, encode_visible

__all__ = ["SiameseMIM", "complementary_mask", "token_infonce", "OcclusionInvariance", "encode_visible"]
