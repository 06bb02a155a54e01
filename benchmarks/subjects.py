"""What the benchmarks time: one MAE pretraining step (forward + backward + AdamW step) of
mimkit and of the peers (Hugging Face ``ViTMAEForPreTraining``, lightly's MAE), configured
identically: same ViT sizes, decoder, mask ratio, norm_pix target, loss on hidden patches only,
AdamW (0.9, 0.95), weight decay 0.05 on the same parameter groups.

Every subject is built from a :class:`Setup` (a plain dataclass, so it can be sent to a child
process as JSON) and steps on a fixed batch and a fixed mask noise, so all implementations see
the same data and the same masks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from torch import nn

PEERS = ("hf", "lightly")
IMPLS = ("mimkit",) + PEERS


@dataclass(frozen=True)
class Arch:
    """A ViT encoder plus MAE decoder, by size."""

    label: str
    img_size: int = 224
    patch: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    dec_dim: int = 512
    dec_depth: int = 8
    dec_heads: int = 16
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2


ARCHS: dict[str, Arch] = {
    "vit_b16": Arch("ViT-B/16"),
    "vit_l16": Arch("ViT-L/16", dim=1024, depth=24, heads=16),
    # the --quick stand-ins: small enough for a smoke test on 2 CPU cores
    "tiny": Arch("tiny", img_size=32, patch=8, dim=64, depth=2, heads=2, dec_dim=32, dec_depth=1, dec_heads=2),
    "tiny_l": Arch("tiny-L", img_size=32, patch=8, dim=96, depth=4, heads=2, dec_dim=32, dec_depth=1, dec_heads=2),
}


@dataclass(frozen=True)
class Setup:
    """One benchmarked configuration: model sizes, batch and the step's settings."""

    impl: str = "mimkit"
    arch: str = "vit_b16"
    batch: int = 8
    mask_ratio: float = 0.75
    encoder_mode: str = "visible_only"  # or with_mask_token (mimkit only: the Table 2 baseline)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    optimizer: str = "default"  # default (torch's choice) | foreach | fused | forloop
    compile: bool = False
    attention: str = "auto"  # auto (torch picks the SDPA kernel) | math (forces SDPBackend.MATH)
    grad_checkpointing: bool = False
    device: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)  # Arch fields to change (img_size, dec_depth, ...)
    seed: int = 0

    @property
    def arch_spec(self) -> Arch:
        return dataclasses.replace(ARCHS[self.arch], **self.overrides)

    def with_(self, **kw: Any) -> "Setup":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def num_keep(self) -> int:
        return int(self.arch_spec.num_patches * (1 - self.mask_ratio))

    @property
    def encoder_tokens(self) -> int:
        """Tokens per sample the encoder processes ([CLS] included)."""
        n = self.arch_spec.num_patches if self.encoder_mode == "with_mask_token" else self.num_keep
        return 1 + n


def available(impl: str) -> bool:
    """Whether the package an implementation needs can be imported here (and, for a peer,
    whether ``MIMKIT_BENCH_PEERS``, a comma-separated list, names it where it is set)."""
    chosen = os.environ.get("MIMKIT_BENCH_PEERS")
    if impl != "mimkit" and chosen is not None and impl not in chosen.split(","):
        return False
    module = {"mimkit": "mimkit", "hf": "transformers", "lightly": "lightly"}[impl]
    return importlib.util.find_spec(module) is not None


def peer_versions() -> dict[str, str | None]:
    """Installed versions of the peers (None where missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("transformers", "lightly", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------
# Model builders: each returns (module, loss_fn(x, noise) -> scalar loss)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _build_mimkit(s: Setup) -> tuple[nn.Module, LossFn]:
    import mimkit

    a = s.arch_spec
    ov = [
        f"data.img_size={a.img_size}", f"model.encoder.patch_size={a.patch}",  # the model follows the data
        f"model.encoder.embed_dim={a.dim}", f"model.encoder.depth={a.depth}",
        f"model.encoder.num_heads={a.heads}", f"model.encoder.mlp_ratio={a.mlp_ratio}",
        f"model.encoder.mode={s.encoder_mode}",
        f"model.encoder.grad_checkpointing={str(s.grad_checkpointing).lower()}",
        f"model.decoder.embed_dim={a.dec_dim}", f"model.decoder.depth={a.dec_depth}",
        f"model.decoder.num_heads={a.dec_heads}", f"model.masker.ratio={s.mask_ratio}",
    ]
    model = mimkit.build({"method": "mae_vit_base_patch16"}, ov)

    def loss(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return model({"image": x}, noise=noise).loss

    return model, loss


def _build_hf(s: Setup) -> tuple[nn.Module, LossFn]:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    if s.encoder_mode != "visible_only" or s.grad_checkpointing:
        raise ValueError("hf: only the visible-only encoder without checkpointing is benchmarked")
    a = s.arch_spec
    cfg = ViTMAEConfig(
        hidden_size=a.dim, num_hidden_layers=a.depth, num_attention_heads=a.heads,
        intermediate_size=int(a.dim * a.mlp_ratio), image_size=a.img_size, patch_size=a.patch,
        decoder_hidden_size=a.dec_dim, decoder_num_hidden_layers=a.dec_depth,
        decoder_num_attention_heads=a.dec_heads, decoder_intermediate_size=int(a.dec_dim * a.mlp_ratio),
        mask_ratio=s.mask_ratio, norm_pix_loss=True, layer_norm_eps=1e-6, qkv_bias=True,
    )
    cfg._attn_implementation = "sdpa"  # its fastest attention on every device
    model = ViTMAEForPreTraining(cfg)

    def loss(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x, noise=noise).loss

    return model, loss


class _LightlyMAE(nn.Module):
    """lightly's MAE example (examples/pytorch/mae.py) with norm_pix and a given mask noise."""

    def __init__(self, s: Setup):
        super().__init__()
        import timm
        from lightly.models import utils
        from lightly.models.modules import MaskedVisionTransformerTIMM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lightly.models.modules import MAEDecoderTIMM

            a = s.arch_spec
            vit = timm.create_model(
                "vit_base_patch16_224", pretrained=False, num_classes=0, img_size=a.img_size,
                patch_size=a.patch, embed_dim=a.dim, depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp_ratio,
            )
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)
            self.backbone.set_grad_checkpointing(s.grad_checkpointing)
            self.decoder = MAEDecoderTIMM(
                num_patches=vit.patch_embed.num_patches, patch_size=a.patch, embed_dim=a.dim,
                decoder_embed_dim=a.dec_dim, decoder_depth=a.dec_depth, decoder_num_heads=a.dec_heads,
                mlp_ratio=a.mlp_ratio,
            )
        self.utils = utils
        self.patch = a.patch
        self.num_keep = s.num_keep
        self.seq_len = self.backbone.sequence_length

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        u = self.utils
        b = x.shape[0]
        # random_token_mask with the given noise: [CLS] always kept, int(N * (1 - r)) patches kept
        full = torch.cat([noise.new_full((b, 1), -1.0), noise], dim=1)
        order = torch.argsort(full, dim=1)
        idx_keep, idx_mask = order[:, : self.num_keep + 1], order[:, self.num_keep + 1 :]
        enc = self.backbone.encode(images=x, idx_keep=idx_keep)
        dec = self.decoder.embed(enc)
        tokens = u.repeat_token(self.decoder.mask_token, (b, self.seq_len))
        tokens = u.set_at_index(tokens, idx_keep, dec.type_as(tokens))
        pred = self.decoder.predict(u.get_at_index(self.decoder.decode(tokens), idx_mask))
        target = u.get_at_index(u.patchify(x, self.patch), idx_mask - 1)
        target = u.normalize_mean_var(target, dim=-1)  # norm_pix
        return nn.functional.mse_loss(pred.float(), target.float())


def _build_lightly(s: Setup) -> tuple[nn.Module, LossFn]:
    if s.encoder_mode != "visible_only":
        raise ValueError("lightly: only the visible-only encoder is benchmarked")
    model = _LightlyMAE(s)
    return model, model


BUILDERS: dict[str, Callable[[Setup], tuple[nn.Module, LossFn]]] = {
    "mimkit": _build_mimkit, "hf": _build_hf, "lightly": _build_lightly,
}


def make_adamw(model: nn.Module, variant: str) -> torch.optim.Optimizer:
    """AdamW as mimkit's ``make_optimizer`` builds it (same groups, betas, wd), with the
    implementation chosen: ``default`` leaves the choice to torch (the for-loop on CPU)."""
    from mimkit.optim import param_groups

    kw: dict[str, Any] = {}
    if variant == "foreach":
        kw["foreach"] = True
    elif variant == "fused":
        kw["fused"] = True
    elif variant == "forloop":
        kw["foreach"] = False
    elif variant != "default":
        raise ValueError(f"unknown optimizer variant {variant!r}")
    return torch.optim.AdamW(param_groups(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95), **kw)


class Subject:
    """A model, its optimizer and a fixed batch: ``step()`` runs one training step."""

    def __init__(self, setup: Setup):
        self.setup = setup
        a = setup.arch_spec
        dev = torch.device(setup.device)
        torch.manual_seed(setup.seed)
        model, loss_fn = BUILDERS[setup.impl](setup)
        self.model = model.to(dev).train()
        self._loss_fn: LossFn = torch.compile(loss_fn) if setup.compile else loss_fn
        self.opt = make_adamw(self.model, setup.optimizer)
        gen = torch.Generator().manual_seed(setup.seed)
        self.x = torch.randn(setup.batch, 3, a.img_size, a.img_size, generator=gen).to(dev)
        self.noise = torch.rand(setup.batch, a.num_patches, generator=gen).to(dev)

    def autocast(self) -> ContextManager[Any]:
        if self.setup.precision == "bf16":
            return torch.autocast(torch.device(self.setup.device).type, dtype=torch.bfloat16)
        if self.setup.precision != "fp32":
            raise ValueError(f"unknown precision {self.setup.precision!r}")
        return contextlib.nullcontext()

    def attention(self) -> ContextManager[Any]:
        """The SDPA backend (the backward uses the kernel the forward picked)."""
        if self.setup.attention == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel([SDPBackend.MATH])
        if self.setup.attention != "auto":
            raise ValueError(f"unknown attention backend {self.setup.attention!r}")
        return contextlib.nullcontext()

    def loss(self) -> torch.Tensor:
        """Forward only: the scalar loss on the fixed batch."""
        with self.autocast(), self.attention():
            return self._loss_fn(self.x, self.noise)

    def forward_backward(self) -> float:
        loss = self.loss()
        loss.backward()
        return float(loss.detach())

    def step(self) -> float:
        """Forward, backward, AdamW step; returns the loss (synchronizes the device)."""
        value = self.forward_backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return value
