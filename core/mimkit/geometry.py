"""Token geometry shared by every method, written once: patchify, position tables, gathers,
per-patch normalization.

Patches are flattened with the colour channel varying fastest, i.e. (pt, ph, pw, c), as
the official MAE and VideoMAE code do; 2D inputs are treated as single-frame 3D inputs.
"""
from __future__ import annotations

import torch


def _as_3d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 4:  # (B, C, H, W) -> (B, C, 1, H, W)
        return x.unsqueeze(2), True
    if x.ndim == 5:
        return x, False
    raise ValueError(f"expected a (B, C, H, W) or (B, C, T, H, W) tensor, got shape {tuple(x.shape)}")


def patchify(x: torch.Tensor, patch: int | tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) or (B, C, T, H, W) -> (B, N, pt*ph*pw*C), tokens in (t, h, w) raster order."""
    x, _ = _as_3d(x)
    pt, ph, pw = _patch3(patch)
    b, c, t, h, w = x.shape
    if t % pt or h % ph or w % pw:
        raise ValueError(f"input {(t, h, w)} is not divisible by the patch {(pt, ph, pw)}")
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = torch.einsum("bctphqwr->bthwpqrc", x)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(
    tokens: torch.Tensor, patch: int | tuple[int, ...], grid: tuple[int, ...], channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`. ``grid`` is (h, w) for images or (t, h, w) for video."""
    video = len(grid) == 3
    gt, gh, gw = (grid if video else (1, *grid))
    pt, ph, pw = _patch3(patch)
    b = tokens.shape[0]
    x = tokens.reshape(b, gt, gh, gw, pt, ph, pw, channels)
    x = torch.einsum("bthwpqrc->bctphqwr", x)
    x = x.reshape(b, channels, gt * pt, gh * ph, gw * pw)
    return x if video else x.squeeze(2)


def _patch3(patch: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(patch, int):
        return (1, patch, patch)
    patch = tuple(patch)
    if len(patch) == 2:
        return (1, *patch)
    if len(patch) == 3:
        return patch  # type: ignore[return-value]
    raise ValueError(f"patch must be an int, (ph, pw) or (pt, ph, pw); got {patch}")


# ---------------------------------------------------------------------------------------------
# Fixed sin-cos position tables (MAE's util/pos_embed.py conventions)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(pos * w_k) | cos(pos * w_k)], w_k = 10000^(-k / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """(grid_h*grid_w [+1], dim) table; first half encodes the column, second half the row
    (the official meshgrid(w, h) order). A leading zero row stands for the [CLS] token."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(grid_h, dtype=torch.float64)
    cols = torch.arange(grid_w, dtype=torch.float64)
    r, c = torch.meshgrid(rows, cols, indexing="ij")  # (gh, gw) each
    emb = torch.cat([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """(T*H*W [+1], dim) table: a third of the channels each for time, row and column."""
    if dim % 6:
        raise ValueError(f"3D sin-cos embedding needs dim divisible by 6, got {dim}")
    t, r, c = torch.meshgrid(
        torch.arange(grid_t), torch.arange(grid_h), torch.arange(grid_w), indexing="ij"
    )
    d = dim // 3
    emb = torch.cat([sincos_1d(d, t), sincos_1d(d, r), sincos_1d(d, c)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


# ---------------------------------------------------------------------------------------------
# Token plumbing


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, K) -> (B, K, D): the tokens at ``ids`` for each sample."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def restore_tokens(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Un-shuffle: (B, N_keep, D) kept tokens + a (1, 1, D) mask token -> (B, N, D) in token order."""
    b, k, d = visible.shape
    n = ids_restore.shape[1]
    full = torch.cat([visible, mask_token.expand(b, n - k, d).to(visible.dtype)], dim=1)
    return gather_tokens(full, ids_restore)


# ---------------------------------------------------------------------------------------------
# Per-patch normalization variants (MAE's norm_pix_loss, facebookresearch/mae models_mae.py;
# VideoMAE's per-channel variant, MCG-NJU/VideoMAE engine_for_pretraining.py)


def patch_stats(
    patches: torch.Tensor, *, channels: int = 1, per_channel: bool = False, unbiased: bool = True,
    eps: float = 1e-6, eps_inside_sqrt: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch (mean, scale), each shaped like ``patches`` (B, N, P*C) or broadcastable to it.

    MAE: all values, unbiased var, scale = sqrt(var + 1e-6).  VideoMAE: per channel, unbiased,
    scale = std + 1e-6.  BootMAE: per channel, biased, scale = sqrt(var + 1e-5). Channels vary
    fastest in the last dimension. A visualizer uses these to undo norm_pix.
    """
    if per_channel:
        b, n, pc = patches.shape
        x = patches.reshape(b, n, pc // channels, channels)  # (B, N, P, C)
        dim = 2
    else:
        x, dim = patches, -1
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, keepdim=True, unbiased=unbiased)
    scale = (var + eps).sqrt() if eps_inside_sqrt else var.sqrt() + eps
    if per_channel:
        mean, scale = mean.expand_as(x).reshape(patches.shape), scale.expand_as(x).reshape(patches.shape)
    return mean, scale


def normalize_patches(patches: torch.Tensor, **variant) -> torch.Tensor:
    """(x - mean) / scale per patch, with the variant options of :func:`patch_stats`."""
    mean, scale = patch_stats(patches, **variant)
    return (patches - mean) / scale


def num_keep_for(num_tokens: int, ratio: float) -> int:
    """The official kept-count rule: int(N * (1 - ratio)), truncation included."""
    return int(num_tokens * (1 - ratio))


def grid_shape(img_size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Token grid of an input size for a patch size (same length tuples)."""
    if any(s % p for s, p in zip(img_size, patch)):
        raise ValueError(f"input size {img_size} is not divisible by patch size {patch}")
    return tuple(s // p for s, p in zip(img_size, patch))


__all__ = [
    "patchify", "unpatchify", "sincos_1d", "sincos_2d", "sincos_3d", "gather_tokens",
    "restore_tokens", "normalize_patches", "patch_stats", "num_keep_for", "grid_shape",
]
