"""The ``maskfeat_vit`` encoder: the core ``vit`` encoder (``with_mask_token``) whose [MASK]
token starts from a truncated normal with std 0.02, as SlowFast's ``MaskMViT``
(``trunc_normal_(self.mask_token, std=0.02)``) — the core's timm init leaves it at zero."""
from __future__ import annotations

from torch import nn

from mimkit.plugin_api import BuildEnv, ViTEncoder


class MaskFeatViTEncoder(ViTEncoder):
    """``maskfeat_vit``: same options and checkpoint keys as ``vit``."""

    def __init__(self, config: "ViTEncoder.Config", env: BuildEnv | None = None):
        super().__init__(config, env)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
