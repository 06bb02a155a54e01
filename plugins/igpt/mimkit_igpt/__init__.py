"""iGPT for mimkit: Generative Pretraining from Pixels (Chen et al., ICML 2020)."""
from .model import IGPT, IGPTTransformer, gelu2
from .palette import Palette

__all__ = ["IGPT", "IGPTTransformer", "Palette", "gelu2"]
