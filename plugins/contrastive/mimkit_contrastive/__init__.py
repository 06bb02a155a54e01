"""Contrastive masked modeling for mimkit: the InfoNCE loss, two-view data, CMAE and MACRL."""
from .convert import convert_official, recipe_for
from .infonce import MLP, InfoNCE, MLPConfig, gather_with_grad, info_nce, pool_tokens
from .models import CMAE, MACRL
from .views import TwoViews

__all__ = ["convert_official", "recipe_for", "CMAE", "MACRL", "MLP", "InfoNCE", "MLPConfig", "TwoViews", "gather_with_grad", "info_nce", "pool_tokens"]
