"""The ``infonce`` loss (MoCo / SimCLR / CMAE / FLIP form) and the small MLP heads it may own.

    q = predictor(projector(pool(outputs[query])))   (B, Dq) -> L2-normalized
    k = pool(outputs[key]) (detached unless ``key_grad``) -> L2-normalized  (B, Dk)
    logits = s * q @ [k_all ; queue]^T   (B, B_all + Q),  s = 1/tau or a learnable exp(logit_scale)
    loss = CE(logits, positives on the diagonal)         [x 2*tau with ``scale_2tau``]
``symmetric`` averages the q->k and k->q directions (FLIP, SimCLR-like); ``gather`` all-gathers
keys (and queries for the reverse direction) across processes, keeping the gradient of the
local part; ``queue`` is MoCo's memory bank of past keys (a registered buffer: checkpointed).
"""
from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, Context, gather_with_grad, Loss, LossConfig, one_of, Outputs


class SyncBatchNorm1d(nn.SyncBatchNorm):
    """BatchNorm1d whose statistics are synchronized across processes when more than one runs
    on an accelerator (the official NonLinearNeck's SyncBN); a plain BatchNorm otherwise (one
    process, or CPU processes where torch cannot sync). Same state-dict keys as BatchNorm1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return nn.modules.batchnorm._BatchNorm.forward(self, x)
        return super().forward(x)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class MLP(nn.Module):
    """Linear -> (BN|LN) -> ReLU ... -> Linear: the CMAE/MoCo projector and predictor (NonLinearNeck).

    ``last_bias`` puts a bias on the last Linear (CMAE's NonLinearNeck: ``with_last_bias=False``);
    ``bn_eps`` is the BatchNorm epsilon (CMAE: 1e-6); BN layers sync across GPU processes.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: str = "bn",
                 last_bias: bool = True, bn_eps: float = 1e-5):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(1, layers) - 1) + [out_dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            last = i == len(dims) - 2
            mods.append(nn.Linear(a, b, bias=last_bias or not last))
            if not last:
                if norm == "bn":
                    mods.append(SyncBatchNorm1d(b, eps=bn_eps))
                elif norm == "ln":
                    mods.append(nn.LayerNorm(b))
                mods.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*mods)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        return self.net(x)


@attrs.define(kw_only=True)
class MLPConfig:
    """A projector / predictor: ``hidden_dim``, ``out_dim``, ``layers`` linear layers, ``norm``,
    a bias on the last layer or not, the BatchNorm epsilon."""

    hidden_dim: int = 2048
    out_dim: int = 256
    layers: int = 2
    norm: str = attrs.field(default="bn", validator=one_of("bn", "ln", "none"))
    last_bias: bool = True
    bn_eps: float = 1e-5


def pool_tokens(x: torch.Tensor, how: str, num_prefix: int = 1) -> torch.Tensor:
    """(B, T, D) -> (B, D): the first ([CLS]) token, or the mean of the tokens after the prefix;
    (B, D) inputs pass through (``none``)."""
    if x.ndim == 2 or how == "none":
        return x
    if how == "cls":
        return x[:, 0]
    return x[:, num_prefix:].mean(1)


def info_nce(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor | float, queue: torch.Tensor | None = None,
             symmetric: bool = False, gather: bool = True) -> torch.Tensor:
    """InfoNCE of L2-normalized q (B, D) against k (B, D): positives are matching rows.

    Negatives: the other (gathered) keys, plus ``queue`` (Q, D) rows for the q->k direction.
    """
    k_all, off = gather_with_grad(k) if gather else (k, 0)
    labels = torch.arange(q.shape[0], device=q.device) + off
    bank = k_all if queue is None else torch.cat([k_all, queue.to(k_all.dtype)])
    loss = F.cross_entropy(scale * q @ bank.t(), labels)  # (B, B_all + Q)
    if symmetric:
        q_all, off_q = gather_with_grad(q) if gather else (q, 0)
        labels_k = torch.arange(k.shape[0], device=k.device) + off_q
        loss = 0.5 * (loss + F.cross_entropy(scale * k @ q_all.t(), labels_k))
    return loss


class InfoNCE(Loss):
    """InfoNCE between two named outputs, with optional projector/predictor and memory bank."""

    @attrs.define(kw_only=True)
    class Config(LossConfig):
        query: str = "latent"
        key: str = "teacher_latent"
        query_pool: str = attrs.field(default="cls", validator=one_of("cls", "mean", "none"))
        key_pool: str = attrs.field(default="cls", validator=one_of("cls", "mean", "none"))
        temperature: float = 0.07
        symmetric: bool = False
        scale_2tau: bool = False  # CMAE multiplies the loss by 2 * tau
        learnable_scale: bool = False  # FLIP/CLIP: logit scale init 1/tau, clamped at scale_max
        scale_max: float = 100.0
        gather: bool = True  # all-gather keys across processes (only when distributed)
        queue: int = 0  # MoCo memory bank size (0: none)
        key_grad: bool = False  # let gradients flow into the key (siamese branches)
        projector: MLPConfig | None = None  # on the query (and the key with project_key)
        project_key: bool = False  # apply the same projector to the key
        predictor: MLPConfig | None = None  # on the query only (BYOL/CMAE style)
        dim: int | None = None  # feature width when the loss cannot infer it (no encoder)

    def __init__(self, config: "InfoNCE.Config", env: BuildEnv | None = None):
        super().__init__(config, env)
        enc = env.encoder if env is not None else None
        dim = config.dim or (enc.embed_dim if enc is not None else None)
        self.num_prefix = getattr(enc, "num_prefix_tokens", 1) if enc is not None else 1
        self.projector = self.predictor = None
        for part in ("projector", "predictor"):  # query -> projector -> predictor, each optional
            p = getattr(config, part)
            if p is not None:
                if dim is None:
                    raise ValueError(f"infonce: set `dim` (the query width) to build a {part}")
                setattr(self, part, MLP(dim, p.hidden_dim, p.out_dim, p.layers, p.norm))
                dim = p.out_dim
        self.logit_scale = None
        if config.learnable_scale:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)))
        if config.queue > 0:
            if dim is None:
                raise ValueError("infonce: set `dim` (the key width) to size the queue")
            self.register_buffer("queue", F.normalize(torch.randn(config.queue, dim), dim=1))  # (Q, D)
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        else:
            self.queue = None

    # -- pieces -------------------------------------------------------------------------------

    def scale(self) -> torch.Tensor | float:
        if self.logit_scale is not None:
            return self.logit_scale.exp().clamp(max=self.config.scale_max)
        return 1.0 / self.config.temperature

    def project_query(self, q: torch.Tensor) -> torch.Tensor:
        if self.projector is not None:
            q = self.projector(q)
        if self.predictor is not None:
            q = self.predictor(q)
        return q

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write the (gathered) keys (n, D) into the ring buffer, oldest first out."""
        if self.queue is None:
            return
        size = self.queue.shape[0]
        k = k.detach().to(self.queue.dtype)[-size:]
        n = k.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=k.device) + ptr) % size
        self.queue[idx] = k
        self.queue_ptr.fill_((ptr + n) % size)

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The loss for already projected q (B, D) and k (B, D); normalizes, uses and fills the queue."""
        c = self.config
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"infonce: query width {q.shape[-1]} != key width {k.shape[-1]}; "
                             "set the projector/predictor out_dim to the key's width")
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        queue = self.queue.clone().detach() if self.queue is not None else None
        loss = info_nce(q, k, self.scale(), queue, c.symmetric, c.gather)
        if self.training and self.queue is not None:
            self.enqueue(gather_with_grad(k.detach())[0] if c.gather else k.detach())
        if c.scale_2tau:
            loss = loss * (2.0 * c.temperature)
        return loss

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        c = self.config
        q = pool_tokens(outputs.get(c.query), c.query_pool, self.num_prefix)  # (B, D)
        k = pool_tokens(outputs.get(c.key), c.key_pool, self.num_prefix)  # (B, D)
        if not c.key_grad:
            k = k.detach()
        if c.project_key and self.projector is not None:
            k = self.projector(k)
        return self.contrast(self.project_query(q), k)
