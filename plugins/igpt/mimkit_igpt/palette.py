"""The colour palette: k-means centres of training pixels, and pixels <-> palette tokens.

iGPT quantizes every RGB pixel to the nearest of 512 k-means centres fit on ImageNet pixels
in [-1, 1] (squared-Euclidean assignment; the official ``color_quantize``). Here the centres
live in whatever space the data loader produces (our loaders normalize with the dataset's
mean/std), so :meth:`Palette.dequantize` returns values the visualizer can un-normalize as it
does any image.

Where the palette comes from: a :class:`Palette` starts *unfitted* (``fitted`` buffer False,
a placeholder ramp of centres) and is fit, once, on the pixels of the first batch the model
sees (:meth:`Palette.fit`, scikit-learn's ``MiniBatchKMeans`` with a fixed ``random_state``).
In training that is the first training batch, a deterministic function of the recipe's seed
(mimkit's data order and augmentation derive from (seed, epoch, index)); under several
processes rank 0's palette is broadcast to the others. ``centers`` and ``fitted`` are buffers,
so the palette is saved in every checkpoint and :func:`mimkit.load` / ``--resume`` restore it
instead of refitting.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mimkit.plugin_api import DataError


class Palette(nn.Module):
    """``size`` colour centres in ``channels`` dimensions: (K, C).

    ``palette(x)`` (an alias of :meth:`quantize`) maps images (B, C, H, W) to tokens (B, H*W)
    in raster order; :meth:`dequantize` maps tokens back to images.
    """

    def __init__(self, size: int, channels: int, seed: int = 0, max_pixels: int = 200_000):
        super().__init__()
        self.size, self.channels, self.seed, self.max_pixels = size, channels, seed, max_pixels
        ramp = torch.linspace(-1.0, 1.0, size).unsqueeze(1).expand(size, channels)  # placeholder grays
        self.register_buffer("centers", ramp.contiguous())  # (K, C)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- fitting ------------------------------------------------------------------------------

    @torch.no_grad()
    def fit(self, pixels: torch.Tensor) -> torch.Tensor:
        """Fit the centres on ``pixels`` (N, C) or images (B, C, H, W); returns the centres.

        Deterministic: at most ``max_pixels`` pixels drawn by ``numpy.default_rng(seed)``,
        ``MiniBatchKMeans(random_state=seed)``, centres sorted by brightness (sum over
        channels) so that token ids are ordered dark to light.
        """
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits

        if pixels.ndim == 4:
            if pixels.shape[1] != self.channels:
                raise DataError(f"palette: images have {pixels.shape[1]} channels, the palette {self.channels}")
            pixels = pixels.permute(0, 2, 3, 1).reshape(-1, self.channels)  # (B*H*W, C)
        data = pixels.detach().to("cpu", torch.float64).numpy()
        rng = np.random.default_rng(self.seed)
        if len(data) > self.max_pixels:
            data = data[np.sort(rng.choice(len(data), self.max_pixels, replace=False))]
        if len(np.unique(data, axis=0)) < self.size:
            raise DataError(f"palette: {self.size} colours requested but the fitting pixels hold only "
                            f"{len(np.unique(data, axis=0))} distinct values; lower model.palette.size")
        km = MiniBatchKMeans(n_clusters=self.size, random_state=self.seed, n_init=3,
                             batch_size=min(4096, len(data)), max_iter=200)
        with threadpool_limits(1):  # small 1-3-D problems: threads only add contention (80x slower on 2 busy cores)
            km.fit(data)
        centers = torch.from_numpy(km.cluster_centers_)
        centers = centers[torch.argsort(centers.sum(1), stable=True)]
        self.centers.copy_(centers.to(self.centers))
        self.fitted.fill_(True)
        return self.centers

    @torch.no_grad()
    def broadcast(self) -> None:
        """Under torch.distributed, every process takes rank 0's palette."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.centers, 0)

    # -- the transform --------------------------------------------------------------------------

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, H*W), raster order, nearest centre in squared
        Euclidean distance (ties: the lower id)."""
        b, c, h, w = x.shape
        if c != self.channels:
            raise DataError(f"palette: images have {c} channels, the palette {self.channels}")
        px = x.permute(0, 2, 3, 1).reshape(b, h * w, c).float()  # (B, L, C)
        cen = self.centers.float()  # (K, C)
        d = (px.unsqueeze(2) - cen).pow(2).sum(-1)  # (B, L, K)
        return d.argmin(-1)

    forward = quantize

    def dequantize(self, tokens: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens (B, L) -> images (B, C, H, W) of centre values (square when ``hw`` is None)."""
        b, n = tokens.shape
        if hw is None:
            side = int(round(n ** 0.5))
            hw = (side, side)
        return self.centers[tokens].reshape(b, hw[0], hw[1], self.channels).permute(0, 3, 1, 2)
