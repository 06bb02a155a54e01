"""The few data types every component speaks: Mask, Context, Outputs.

Convention (as in the official MAE-family code): in ``Mask.hidden``, True means the token is
hidden from the encoder ("mask = 1 means removed").
"""
from __future__ import annotations

from typing import Any

import attrs
import torch


@attrs.define(eq=False)
class Mask:
    """Which tokens the encoder does not see, with the index plumbing to drop and restore them.

    ``ids_shuffle`` lists kept tokens first, then hidden ones; every sample keeps the same
    number (``num_keep``) so a visible-only encoder can batch them. ``corrupted`` and
    ``domain_mask`` carry input-space corruption (MFM's filtered image and its frequency mask,
    True = removed) for methods whose mask does not live on tokens.
    """

    hidden: torch.Tensor  # (B, N) bool, True = hidden
    ids_shuffle: torch.Tensor  # (B, N) long, kept tokens first
    ids_restore: torch.Tensor  # (B, N) long, inverse permutation of ids_shuffle
    num_keep: int
    corrupted: torch.Tensor | None = None  # the corrupted input, same shape as the input
    domain_mask: torch.Tensor | None = None  # e.g. (B, C, H, W) frequency mask, True = removed

    @property
    def ids_keep(self) -> torch.Tensor:  # (B, N_keep)
        return self.ids_shuffle[:, : self.num_keep]

    @property
    def ids_hidden(self) -> torch.Tensor:  # (B, N - N_keep)
        return self.ids_shuffle[:, self.num_keep :]

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[1]

    @classmethod
    def from_noise(cls, noise: torch.Tensor, num_keep: int) -> "Mask":
        """The official MAE recipe: argsort uniform noise (B, N); the smallest ``num_keep`` stay."""
        ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        hidden = torch.ones_like(noise, dtype=torch.bool)
        hidden[:, :num_keep] = False
        hidden = torch.gather(hidden, 1, ids_restore)  # back to token order
        return cls(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=ids_restore, num_keep=num_keep)

    @classmethod
    def from_hidden(cls, hidden: torch.Tensor, equal_counts: bool = True) -> "Mask":
        """A Mask from a boolean (B, N) map; kept and hidden tokens each stay in ascending order.

        With ``equal_counts`` every row must hide the same number of tokens (checked), as the
        visible-only encoder batches the kept tokens. Without, rows may differ (what a
        ``with_mask_token`` encoder and the masked losses read: ``hidden`` is exact); then
        ``num_keep`` is the smallest kept count, so ``ids_keep`` lists kept tokens of every row
        and ``ids_hidden`` may include kept ones.
        """
        hidden = hidden.bool()
        counts = hidden.sum(1)
        unequal = counts.numel() and bool((counts != counts[0]).any())
        if unequal and equal_counts:
            raise ValueError(
                f"every sample must hide the same number of tokens; got counts {counts.tolist()}"
            )
        num_keep = hidden.shape[1] - (int(counts.max()) if counts.numel() else 0)
        ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return cls(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=ids_restore, num_keep=num_keep)

    @classmethod
    def none(cls, batch: int, num_tokens: int, device: torch.device | str = "cpu") -> "Mask":
        """Nothing hidden (evaluation, MFM's token grid)."""
        ids = torch.arange(num_tokens, device=device).expand(batch, -1)
        hidden = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
        return cls(hidden=hidden, ids_shuffle=ids, ids_restore=ids, num_keep=num_tokens)


# Context and Outputs write their own ``__init__``: attrs' generated one reads ``NOTHING`` and its
# factories from a copy of this module's globals, which torch 2.11's dynamo could not guard
# (``module 'mimkit.types' has no attribute 'NOTHING'``), so no model forward compiled there.


@attrs.define(eq=False, init=False)
class Context:
    """The step's shared state: what the teacher computed, the step counters and an RNG.

    ``teacher`` holds the teacher's outputs for this step (features per layer, CLS attention,
    ...) so maskers, targets and losses can read them; ``extra`` is free for plugins.
    """

    step: int
    epoch: int
    generator: torch.Generator | None
    teacher: dict[str, Any]
    extra: dict[str, Any]

    def __init__(self, step: int = 0, epoch: int = 0, generator: torch.Generator | None = None,
                 teacher: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        self.step, self.epoch, self.generator = step, epoch, generator
        self.teacher = {} if teacher is None else teacher
        self.extra = {} if extra is None else extra


@attrs.define(eq=False, init=False)
class Outputs:
    """What a forward returns: the weighted ``loss``, its named terms and the tensors behind them.

    ``pred_scope`` says whether ``pred``/``target`` cover all tokens ("all") or only the hidden
    ones in ``mask.ids_hidden`` order ("masked"). Losses read tensors by name through ``get``.
    """

    loss: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    pred: torch.Tensor | None
    target: torch.Tensor | None
    mask: Mask | None
    latent: torch.Tensor | None
    pred_scope: str
    extra: dict[str, Any]

    def __init__(self, loss: torch.Tensor | None = None, losses: dict[str, torch.Tensor] | None = None,
                 pred: torch.Tensor | None = None, target: torch.Tensor | None = None, mask: Mask | None = None,
                 latent: torch.Tensor | None = None, pred_scope: str = "all", extra: dict[str, Any] | None = None) -> None:
        self.loss, self.pred, self.target, self.mask, self.latent = loss, pred, target, mask, latent
        self.losses = {} if losses is None else losses
        self.pred_scope = pred_scope
        self.extra = {} if extra is None else extra

    def get(self, name: str) -> Any:
        """An output by name: a field of this class, else an entry of ``extra``."""
        if name in ("loss", "losses", "pred", "target", "mask", "latent", "pred_scope"):
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        available = ["pred", "target", "mask", "latent", *self.extra]
        raise KeyError(f"no output named {name!r}; available: {available}")
