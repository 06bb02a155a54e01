"""The contracts every component honours: the build environment, the small base classes
(:class:`Masker`, :class:`Loss`) and :class:`typing.Protocol` s for the other kinds (encoder,
decoder, target, teacher, visualizer, dataset, evaluation protocol). The hook specifications
(:mod:`mimkit.hookspecs`) are typed with them. The protocols are structural: a plugin's class
need not inherit from them, only have the attributes and methods they list."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import attrs
import torch
from torch import nn

from ..errors import ConfigError
from ..schema import component
from ..types import Context, Mask


@attrs.define(kw_only=True)
class BuildEnv:
    """What a component may know about the components built before it.

    Order: encoder -> target -> decoder -> masker -> losses -> teacher. ``load`` is
    :func:`mimkit.load` (path -> model), handed in by the builder so that components that load
    pretrained models (the frozen teacher) need not import the API above them.
    """

    registry: Any
    load: Callable[[str], nn.Module] | None = None
    encoder: Any = None  # the built encoder module
    target_dim: int | None = None  # values per token the decoder must predict
    input_key: str = "image"
    extra: dict[str, Any] = attrs.field(factory=dict)

    def decoder_width(self, out_dim: int | None) -> int:
        """What a decoder predicts per token: its ``out_dim`` option, else the target's width."""
        width = out_dim or self.target_dim
        if width is None:
            raise ConfigError("model.decoder.out_dim: the target declares no width; set out_dim")
        return width

    def build(self, kind: str, spec: Any, path: str, **kwargs: Any) -> Any:
        """The registered component of ``kind`` (``"decoders"``...) that ``spec`` names, built with
        this environment: ``cls(Config, env, **kwargs)``; ``path`` (``"model.decoder"``) names it
        in errors. ``env.build("teachers", spec, "model.teacher", student=self)``."""
        cls, cfg = component(kind, spec, path, self.registry)
        return cls(cfg, self, **kwargs)


class Masker(nn.Module):
    """Base for maskers: per-sample randomness in the loader, vectorized masking on the device."""

    num_tokens: int
    #: The masks are maps over the encoder's tokens, so an explicit (B, N) boolean map can stand
    #: for them (``MaskedModel.forward(batch, mask=...)``); False for a masker that corrupts the
    #: input instead (MFM's frequency masker).
    token_masks: ClassVar[bool] = True

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's randomness (drawn in the data loader)."""
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """A batch of randomness when the loader did not provide it (Python API, TTT)."""
        g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
        return torch.stack([self.sample_noise(g) for _ in range(batch_size)]).to(device)


def init_xavier_(module: nn.Module) -> None:
    """The MAE family's weight init: xavier-uniform linears with zero bias, unit LayerNorms
    (``_init_weights`` of the official MAE and VideoMAE code)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@attrs.define(kw_only=True)
class LossConfig:
    """Options every loss has: its weight in the total."""

    weight: float = 1.0


class Loss(nn.Module):
    """Base for losses: ``forward(outputs, batch, ctx) -> scalar``; the model applies ``weight``."""

    Config = LossConfig

    def __init__(self, config: Any, env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        self.weight = config.weight


# ---------------------------------------------------------------------------------------------
# Structural contracts (what the hookspecs register)


@runtime_checkable
class Encoder(Protocol):
    """An encoder (``mimkit_encoders``): token geometry plus three entry points."""

    embed_dim: int
    grid: tuple[int, int, int]  # (t, h, w) tokens
    patch: tuple[int, int, int]  # (pt, ph, pw) pixels/frames per token
    in_chans: int
    num_prefix_tokens: int

    def embed(self, x: torch.Tensor, mask: Mask | None) -> torch.Tensor:
        """Tokens of ``x`` (only the kept ones for a visible-only encoder)."""

    def encode(self, tokens: torch.Tensor, mask: Mask | None) -> torch.Tensor:
        """The latent (B, prefix + N_seen, D)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The latent of the whole input, for evaluation: (B, prefix + N, D)."""

    def pool(self, tokens: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """(B, T, D) -> (B, D): the [CLS] token or the mean of the patch tokens."""


@runtime_checkable
class Decoder(Protocol):
    """A decoder (``mimkit_decoders``): predicts every token or only the hidden ones."""

    predict: str  # "all" | "masked"

    def __call__(self, latent: torch.Tensor, mask: Mask, ctx: Context) -> torch.Tensor:
        """(B, N | N_hidden, target dim), hidden tokens in ``mask.ids_hidden`` order."""


@runtime_checkable
class Target(Protocol):
    """A target (``mimkit_targets``): what the decoder must predict, without gradients."""

    dim: int  # values per token

    def __call__(self, batch: dict, mask: Mask, ctx: Context) -> torch.Tensor:
        """(B, N, dim) for every token."""


@runtime_checkable
class Teacher(Protocol):
    """A teacher (``mimkit_teachers``): gradient-free outputs stored in ``ctx.teacher``.

    Optional: ``set_schedule(total_steps, steps_per_epoch)``, ``on_step_end(model, step)`` and
    ``on_epoch_end(model, epoch)`` (EMA updates), called through :class:`mimkit.model.MethodModel`.
    """

    def __call__(self, batch: dict, ctx: Context | None = None) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Visualizer(Protocol):
    """A picture of a model's outputs (``mimkit_visualizers``), built as ``cls(config=None)``."""

    def __call__(self, model: nn.Module, batch: dict, path: str | Path, *, mean: Sequence[float],
                 std: Sequence[float], seed: int = 0, title: str = "") -> Path:
        """Write a PNG of the model's outputs on ``batch`` to ``path``; return its path."""


@runtime_checkable
class Dataset(Protocol):
    """A data source (``mimkit_datasets``): ``cls(config, split=None, train=None)`` is a map-style
    dataset of dicts (``"image"`` | ``"video"`` | ``"audio"``, optional ``"label"``).

    Labelled evaluation: a class method ``eval_split(config) -> Config | None`` returns the
    config of the labelled held-out split (``None`` when there is none); see
    :func:`mimkit.data.eval_split`.

    Geometry: Config fields with metadata ``{"geometry": KEY}`` (``img_size``, ``channels``,
    ``num_frames``...) state it once; model fields with ``{"follows": KEY}`` take it in
    :func:`mimkit.resolve` (:func:`mimkit.schema.follow_geometry`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class EvalProtocol(Protocol):
    """An evaluation or analysis protocol (``mimkit_protocols``), built as ``cls(config)``; its
    ``Config`` fields are the flags of ``mim eval NAME`` / ``mim analyze NAME``."""

    Config: ClassVar[type]

    def __call__(self, sources: list[str]) -> Mapping[str, Any]:
        """Run on the positional sources; a JSON-serializable record (``"summary"``: one line)."""


@attrs.define(frozen=True, kw_only=True)
class Exporter:
    """An export format a plugin writes (``mimkit_exporters``): ``mim export SRC --format F OUT``.

    ``check(model)`` raises a :class:`~mimkit.errors.ConfigError` naming what the model lacks
    when it is not a model this exporter describes (called before anything is written);
    ``write(model, folder)`` writes ``folder`` (a new, empty folder the core renames into
    place once complete). Several exporters may share a ``format`` (one per architecture: a
    ``ViTMAEForPreTraining`` and a ``VideoMAEForPreTraining`` folder are both ``hf``): the
    first whose ``check`` passes writes."""

    format: str  # the --format name, e.g. "hf"
    check: Callable[[nn.Module], Any]
    write: Callable[[nn.Module, Path], Any]
    describes: str = ""  # what it writes, e.g. "a transformers ViTMAEForPreTraining folder"
    load_hint: str = ""  # how to load the result; "{path}" is replaced by the folder

