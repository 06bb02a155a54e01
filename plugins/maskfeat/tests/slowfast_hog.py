"""SlowFast's ``HOGLayerC`` written out in plain torch: the HOG reference of the MaskFeat parity tests."""
import math

import torch
import torch.nn.functional as F


def ref_hog(x: torch.Tensor, nbins: int = 9, pool: int = 8) -> torch.Tensor:
    """HOGLayerC.forward: (B, 3, H, W) -> (B, 3, nbins, H/pool, W/pool)."""
    wx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    gx, gy = F.conv2d(x, wx, groups=3), F.conv2d(x, wx.transpose(2, 3), groups=3)
    mag = torch.stack([gx, gy], -1).norm(dim=-1)
    phase = torch.atan2(gx, gy) / math.pi * nbins
    b, c, h, w = mag.shape
    out = torch.zeros(b, c, nbins, h, w).scatter_add_(2, phase.floor().long().view(b, c, 1, h, w) % nbins,
                                                       mag.view(b, c, 1, h, w))
    out = out.unfold(3, pool, pool).unfold(4, pool, pool).sum(dim=[-1, -2])
    return F.normalize(out, p=2, dim=2)
