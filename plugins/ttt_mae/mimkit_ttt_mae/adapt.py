"""Test-time training with MAE (``engine_test_time.py``: ``train_on_test``), per image and batched.

For every test image, from the same base weights:
    for step in 1..S:
        copies = the image repeated ``copies`` times, each with its own random mask (ratio 0.75)
        loss   = MAE loss (norm-pix MSE on the hidden patches) through the encoder and the
                 frozen decoder
        SGD(momentum 0.9, lr 5e-3) step on the encoder only (``finetune_mode=encoder``)
        logits[step] = head(encoder(image, mask ratio 0))      # accuracy per step index
``logits[0]`` is the un-adapted baseline.

Two implementations with the same result:
* :func:`adapt_loop` - the official flow, one image at a time (a fresh encoder copy and
  optimizer per image);
* :func:`adapt_batched` - many images at once: the encoder's parameters are stacked into one
  copy per image; every step is one batched forward/backward (a hand-written stacked-weight ViT,
  :mod:`.stacked`, or ``torch.func.vmap(grad(loss))`` for other encoders), then the same
  SGD-momentum update on the stacked tensors.
The mask noise of image ``i`` is drawn up front from its own generator, so both see the same masks.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mimkit.plugin_api import Mask, num_keep_for, seed_for

from .stacked import StackedViT, supports


def mask_noise(indices, steps: int, copies: int, num_tokens: int, seed: int) -> torch.Tensor:
    """(n, steps, copies, N) uniform noise; image i's from ``seed_for(seed, index_i)``."""
    return torch.stack([torch.rand(steps, copies, num_tokens, generator=torch.Generator().manual_seed(seed_for(seed, int(i))))
                        for i in indices])


def mae_loss(encoder: nn.Module, decoder: nn.Module, target: nn.Module, x: torch.Tensor, noise: torch.Tensor,
             num_keep: int, input_key: str = "image") -> torch.Tensor:
    """MAE loss of copies of one image: x (C, H, W), noise (copies, N) -> scalar (mean over
    patch values, then over the hidden patches of all copies)."""
    xc = x.unsqueeze(0).expand(noise.shape[0], *x.shape)  # (copies, C, H, W)
    mask = Mask.from_noise(noise, num_keep)
    latent = encoder(xc, mask)  # (copies, 1 + K, D)
    pred = decoder(latent, mask)  # (copies, N, p*p*C)
    tgt = target({input_key: xc}, mask, None)  # (copies, N, p*p*C)
    per_patch = ((pred - tgt) ** 2).mean(-1)
    hidden = mask.hidden.to(per_patch.dtype)
    return (per_patch * hidden).sum() / hidden.sum()


def _trainable(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in encoder.named_parameters() if v.requires_grad}


def adapt_loop(model: nn.Module, head: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, lr: float = 5e-3,
               momentum: float = 0.9, mask_ratio: float = 0.75, optimizer: str = "sgd") -> torch.Tensor:
    """Per-image TTT-MAE (the official loop). images (n, C, H, W), noise (n, S, copies, N) ->
    logits (n, S + 1, classes); ``model`` (encoder, decoder, target) is left unchanged."""
    enc0, dec, tgt = model.encoder, model.decoder, model.target
    key = getattr(model, "input_key", "image")
    num_keep = num_keep_for(noise.shape[-1], mask_ratio)
    for p in dec.parameters():
        p.requires_grad_(False)
    out = []
    for x, nz in zip(images, noise):
        enc = copy.deepcopy(enc0)  # _reinitialize_model
        enc.train()
        params = list(_trainable(enc).values())
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.95))
        else:
            opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
        logits = []
        with torch.no_grad():
            logits.append(head(enc.forward_features(x[None]))[0])
        for s in range(nz.shape[0]):
            loss = mae_loss(enc, dec, tgt, x, nz[s], num_keep, key)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                logits.append(head(enc.forward_features(x[None]))[0])
        out.append(torch.stack(logits))
    return torch.stack(out)


def auto_chunk(copies: int, device: torch.device | str = "cpu", budget: int | None = None) -> int:
    """Images per batched group: about ``budget`` masked copies in flight. On a CPU 256 (measured
    here, tiny encoder, 128 copies: groups of 1-2 images run as fast as the loop, 4 are 12 % slower
    as the working set leaves the cache, 8 are 25 % slower). On CUDA 8192: 64 images of 128 copies
    ran at 14.6x the loop on an H200, where small groups leave the GPU idle between launches."""
    if budget is None:
        budget = 8192 if torch.device(device).type == "cuda" else 256
    return max(1, budget // copies)


def adapt_batched(model: nn.Module, head: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, lr: float = 5e-3,
                  momentum: float = 0.9, mask_ratio: float = 0.75, chunk: int | None = None,
                  impl: str = "auto") -> torch.Tensor:
    """The same as :func:`adapt_loop` (SGD with momentum) for many images at once, with one copy of
    the encoder's parameters per image stacked on a leading dimension.

    ``impl``: ``stacked`` - a hand-written batched-matmul ViT forward (:class:`StackedViT`), one
    ``autograd.grad`` of the summed per-image losses, a ``torch._foreach`` SGD update;
    ``vmap`` - ``torch.func.vmap(grad(loss))`` over ``functional_call`` of any encoder;
    ``auto`` - ``stacked`` where the encoder is supported, else ``vmap``.
    ``chunk`` bounds how many images run together (memory); None: all."""
    if impl not in ("auto", "stacked", "vmap"):
        raise ValueError(f"impl must be auto, stacked or vmap, got {impl!r}")
    n = images.shape[0]
    if chunk is not None and chunk < n:
        return torch.cat([adapt_batched(model, head, images[i : i + chunk], noise[i : i + chunk], lr=lr,
                                        momentum=momentum, mask_ratio=mask_ratio, impl=impl)
                          for i in range(0, n, chunk)])
    if impl == "vmap" or (impl == "auto" and supports(model.encoder) is not None):
        return _adapt_vmap(model, head, images, noise, lr=lr, momentum=momentum, mask_ratio=mask_ratio)
    return _adapt_stacked(model, head, images, noise, lr=lr, momentum=momentum, mask_ratio=mask_ratio)


def _adapt_stacked(model: nn.Module, head: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, lr: float,
                   momentum: float, mask_ratio: float) -> torch.Tensor:
    enc, dec, tgt = model.encoder, model.decoder, model.target
    key = getattr(model, "input_key", "image")
    n, steps, copies, num_tokens = noise.shape
    num_keep = num_keep_for(num_tokens, mask_ratio)
    for p in dec.parameters():
        p.requires_grad_(False)
    stacked = StackedViT(enc, n)
    params = stacked.params
    xc = images.unsqueeze(1).expand(n, copies, *images.shape[1:]).reshape(n * copies, *images.shape[1:])

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            return head(stacked.forward_features(images))  # (n, classes)

    out = [evaluate()]
    bufs: list[torch.Tensor] = []
    for s in range(steps):
        mask = Mask.from_noise(noise[:, s].reshape(n * copies, num_tokens), num_keep)
        latent = stacked.forward_masked(images, mask)  # (n * copies, 1 + K, D)
        pred = dec(latent, mask)  # the frozen decoder's weights are shared: one ordinary batch
        target = tgt({key: xc}, mask, None)
        per_patch = ((pred - target) ** 2).mean(-1).view(n, -1)  # (n, copies * N)
        hidden = mask.hidden.view(n, -1).to(per_patch.dtype)
        loss = ((per_patch * hidden).sum(1) / hidden.sum(1)).sum()  # images are independent: sum of losses
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # torch.optim.SGD: buf = g (first step), then momentum * buf + g; p -= lr * buf
            if s == 0:
                bufs = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-lr)
        out.append(evaluate())
    return torch.stack(out, 1)  # (n, S + 1, classes)


def _adapt_vmap(model: nn.Module, head: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, lr: float,
                momentum: float, mask_ratio: float) -> torch.Tensor:
    n = images.shape[0]
    enc, dec, tgt = model.encoder, model.decoder, model.target
    key = getattr(model, "input_key", "image")
    num_keep = num_keep_for(noise.shape[-1], mask_ratio)
    for p in dec.parameters():
        p.requires_grad_(False)
    was_training = enc.training
    enc.train()
    names = list(_trainable(enc))
    frozen = {k: v.detach() for k, v in enc.named_parameters() if k not in names}
    frozen.update(dict(enc.named_buffers()))
    params = {k: enc.get_parameter(k).detach().unsqueeze(0).repeat(n, *[1] * enc.get_parameter(k).ndim) for k in names}
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, nz: torch.Tensor) -> torch.Tensor:
        call = _Bound(enc, {**p, **frozen})
        return mae_loss(call, dec, tgt, x, nz, num_keep, key)

    step_grad: Callable[..., Any] = vmap(grad(loss_fn), in_dims=(0, 0, 0))

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            tokens = vmap(lambda p, x: _features(enc, {**p, **frozen}, x))(params, images)  # (n, 1, T, D)
            return head(tokens.flatten(0, 1))  # (n, classes)

    out = [evaluate()]
    for s in range(noise.shape[1]):
        g = step_grad(params, images, noise[:, s])
        for k in names:  # torch.optim.SGD: buf = g (first step), then momentum * buf + g; p -= lr * buf
            bufs[k] = g[k] if s == 0 else bufs[k].mul(momentum).add(g[k])
            params[k] = params[k] - lr * bufs[k]
        out.append(evaluate())
    enc.train(was_training)
    return torch.stack(out, 1)  # (n, S + 1, classes)


def _features(enc: nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return _FeatureCall(enc, p)(x[None])  # (1, 1 + N, D)


class _Bound:
    """``encoder(x, mask)`` with the given parameters (a functional call of embed + encode)."""

    def __init__(self, enc: nn.Module, p: dict[str, torch.Tensor]):
        self.enc, self.p = enc, p

    def __call__(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        return functional_call(self.enc, self.p, (x, mask))


class _FeatureCall:
    """``encoder.forward_features(x)`` with the given parameters."""

    def __init__(self, enc: nn.Module, p: dict[str, torch.Tensor]):
        self.enc, self.p = enc, p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(_ForwardFeatures(self.enc), {f"enc.{k}": v for k, v in self.p.items()}, (x,))


class _ForwardFeatures(nn.Module):
    def __init__(self, enc: nn.Module):
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.forward_features(x)
