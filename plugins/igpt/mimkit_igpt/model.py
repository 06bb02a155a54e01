"""iGPT: a GPT-2 transformer over palette tokens (Chen et al., ICML 2020; openai/image-gpt src/model.py).

One training step, as data flows::

    image (B, C, H, W)  -> downsample to n_px x n_px (area)        -> (B, C, n, n)
                        -> palette.quantize (nearest k-means centre) -> tokens X (B, L), L = n*n
    AR:   h = [sos, wte[X_0 .. X_{L-2}]] + wpe                        (input shifted right after SOS)
    BERT: h = wte[X] * keep + wpe, keep ~ Bernoulli(1 - 0.15)          (masked embeddings zeroed)
          -> n_layer pre-norm blocks: x + attn(norm(x)); x + mlp(norm(x)), gelu2, causal for AR
          -> ln_f -> logits = h @ wtet^T (B, L, K)                     (untied, zero-initialized)
    AR:   loss = mean over all positions of CE(logits_i, X_i)
    BERT: loss = mean over images of (sum_i CE_i * masked_i / sum_i masked_i)
    [optional, fine-tuning] + clf_weight * CE(mean_i(h_i) @ wclf^T, label)

As in the official code, the norm is an RMS norm with a gain and no bias
(``x * rsqrt(mean(x^2) + 1e-5) * g``, Hugging Face's ``ImageGPTLayerNorm``) and the projections
have no biases; attention runs through ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import ConfigError, Context, DataError, FieldError, MethodModel, one_of, Outputs, step_noise

from .palette import Palette


def gelu2(x: torch.Tensor) -> torch.Tensor:
    """iGPT's activation: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def _positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise FieldError(attribute.name, f"must be > 0, got {value!r}")


@attrs.define(kw_only=True)
class PaletteConfig:
    """The colour palette: ``size`` k-means centres (512 for RGB in the paper)."""

    size: int = attrs.field(default=512, validator=_positive)
    seed: int = 0  # MiniBatchKMeans random_state and pixel subsampling
    max_pixels: int = attrs.field(default=200_000, validator=_positive)  # pixels of the first batch used for the fit


class Attention(nn.Module):
    """Multi-head self-attention without biases, with an optional key/value cache."""

    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.normal_(self.qkv.weight, std=1.0 / math.sqrt(dim))  # official q/k/v_proj init
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(dim * layers))  # official c_proj init

    def forward(self, x: torch.Tensor, causal: bool, cache: dict | None = None, pos: int = 0) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, n, hd)
        if cache is not None:  # write this chunk at [pos, pos + n), attend to everything up to it
            cache["k"][:, :, pos : pos + n] = k
            cache["v"][:, :, pos : pos + n] = v
            k, v = cache["k"][:, :, : pos + n], cache["v"][:, :, : pos + n]
            causal = causal and n > 1  # one new query sees the whole past; a prompt chunk starts at pos 0
            if causal and pos != 0:
                raise ValueError("a multi-token chunk is only supported at the start of the cache")
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, n, hd)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """GPT-2 pre-norm block: x + attn(norm(x)); x + mlp(norm(x)) with gelu2 and 4x width."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.RMSNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads, layers)
        self.ln_2 = nn.RMSNorm(dim, eps=1e-5)
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)
        nn.init.normal_(self.fc.weight, std=0.02)  # official conv1d init
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, x: torch.Tensor, causal: bool, cache: dict | None = None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal, cache, pos)
        return x + self.proj(gelu2(self.fc(self.ln_2(x))))


class IGPTTransformer(nn.Module):
    """The palette and the GPT-2 pixel transformer: what a frozen-feature protocol needs.

    ``forward_features(x)`` -> (B, L, D): the RMS-normalized hidden states after block
    ``probe_layer`` of whole images (average-pool them with ``pool``, as the paper's linear
    probes do). ``vit`` is this module itself, so the core's ``mim eval knn|linprobe`` (which look
    for ``model.encoder.vit``) run on it.
    """

    def __init__(self, *, n_px: int, channels: int, palette: PaletteConfig, n_layer: int, n_embd: int,
                 n_head: int, mlp_ratio: float, objective: str, probe_layer: int):
        super().__init__()
        self.n_px, self.channels, self.seq_len = n_px, channels, n_px * n_px
        self.embed_dim, self.n_layer, self.objective, self.probe_layer = n_embd, n_layer, objective, probe_layer
        self.causal = objective == "ar"
        self.palette = Palette(palette.size, channels, palette.seed, palette.max_pixels)
        k = palette.size
        self.wte = nn.Parameter(torch.empty(k, n_embd))  # input token embedding
        self.wpe = nn.Parameter(torch.empty(self.seq_len, n_embd))  # learned positions
        self.sos = nn.Parameter(torch.empty(n_embd))  # learned start-of-sequence (AR)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, n_layer, mlp_ratio) for _ in range(n_layer)])
        self.ln_f = nn.RMSNorm(n_embd, eps=1e-5)
        self.wtet = nn.Parameter(torch.zeros(k, n_embd))  # untied output embedding, zero init
        nn.init.normal_(self.wte, std=0.02)
        nn.init.normal_(self.wpe, std=0.01)
        nn.init.normal_(self.sos, std=0.02)
        self._palette_checked = False
        self.register_load_state_dict_post_hook(lambda mod, _keys: setattr(mod, "_palette_checked", False))

    # -- the core's encoder protocol ----------------------------------------------------------

    @property
    def vit(self) -> "IGPTTransformer":
        return self

    @property
    def num_patches(self) -> int:
        return self.seq_len

    # -- pixels -> tokens ---------------------------------------------------------------------

    def ensure_palette(self, x: torch.Tensor) -> None:
        """Fit the palette on ``x`` if it was never fit (the first batch the model sees)."""
        if self._palette_checked:
            return
        if not bool(self.palette.fitted):
            self.palette.fit(x)
            self.palette.broadcast()
        self._palette_checked = True

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, n_px, n_px): area average when larger (the paper's downsampling)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise DataError(f"iGPT expects images (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2:] == (self.n_px, self.n_px):
            return x
        if x.shape[-1] < self.n_px or x.shape[-2] < self.n_px:
            raise DataError(f"iGPT: images of {tuple(x.shape[-2:])} are smaller than model.n_px={self.n_px}")
        return F.interpolate(x.float(), size=(self.n_px, self.n_px), mode="area")

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> palette tokens (B, L), fitting the palette first if needed."""
        x = self.downsample(x)
        self.ensure_palette(x)
        return self.palette(x)

    # -- the transformer ------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings (B, L, D). AR: SOS then the tokens shifted right; BERT: the token
        embedding of every hidden position zeroed (no learned [MASK]). Positions are added last."""
        b, n = tokens.shape
        h = self.wte[tokens]  # (B, L, D)
        if self.causal:
            h = torch.cat([self.sos.expand(b, 1, -1), h[:, :-1]], dim=1)
        elif hidden is not None:
            h = h * (~hidden).unsqueeze(-1).to(h.dtype)
        return h + self.wpe[:n]

    def hidden_states(self, h: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """[embeddings, after block 1, ..., after block ``upto``] (each (B, L, D))."""
        out = [h]
        for blk in self.blocks[: self.n_layer if upto is None else upto]:
            h = blk(h, self.causal)
            out.append(h)
        return out

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """(B, L, D) after the last block -> (B, L, K)."""
        return self.ln_f(h_last) @ self.wtet.t()

    @staticmethod
    def pooled(h: torch.Tensor) -> torch.Tensor:
        """Average pool of the normalized states (the paper's f = <norm(h_i)>_i): (B, L, D) -> (B, D)."""
        return F.rms_norm(h, (h.shape[-1],), eps=1e-5).mean(1)

    def forward_features(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Normalized hidden states after block ``layer`` (default ``probe_layer``) of whole images: (B, L, D)."""
        layer = self.probe_layer if layer is None else layer
        if not 0 <= layer <= self.n_layer:
            raise ConfigError(f"layer {layer} is out of range: iGPT has layers 0 (embeddings) .. {self.n_layer}")
        h = self.hidden_states(self.embed(self.tokenize(x)), upto=layer)[-1]
        return F.rms_norm(h, (h.shape[-1],), eps=1e-5)

    def pool(self, tokens: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """(B, L, D) -> (B, D). iGPT has no [CLS]: every pooling is the average (``cls`` too)."""
        return tokens.mean(1)

    @torch.no_grad()
    def layer_features(self, x: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """Average-pooled normalized features of several layers in one pass: (len(layers), B, D)."""
        layers = list(range(self.n_layer + 1)) if layers is None else layers
        states = self.hidden_states(self.embed(self.tokenize(x)), upto=max(layers))
        return torch.stack([self.pooled(states[i]) for i in layers])

    # -- sampling -------------------------------------------------------------------------------

    def _pick(self, logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
        """One token per row from (B, K) logits: softmax(logits / T) over the ``top_k`` best."""
        logits = logits.float() / max(temperature, 1e-8)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)

    @torch.no_grad()
    def sample(self, prompt: torch.Tensor, length: int | None = None, *, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None,
               use_cache: bool = True) -> torch.Tensor:
        """Continue ``prompt`` (B, P) palette tokens to ``length`` (default L) tokens: (B, length).

        With ``use_cache`` each new token runs one position through the blocks against cached
        keys and values (linear work per token); without it the whole prefix is recomputed
        for every token (quadratic). Both draw the same random numbers in the same order, so
        for one ``generator`` seed they return the same tokens (up to float rounding ties).
        """
        if not self.causal:
            raise ConfigError("sampling pixel by pixel needs model.objective=ar (BERT models are not causal)")
        length = self.seq_len if length is None else length
        b, p = prompt.shape
        if not 0 <= p < length <= self.seq_len:
            raise ConfigError(f"sample: prompt of {p} tokens and length {length} must satisfy 0 <= P < length <= {self.seq_len}")
        out = torch.zeros(b, length, dtype=torch.long, device=prompt.device)
        out[:, :p] = prompt
        if not use_cache:
            for t in range(p, length):
                logits = self.logits(self.hidden_states(self.embed(torch.cat(  # input [sos, X_0..X_{t-1}]
                    [out[:, :t], out[:, :1]], 1)))[-1])[:, t]  # the appended dummy is never attended by t
                out[:, t] = self._pick(logits, temperature, top_k, generator)
            return out
        hd = self.embed_dim // self.blocks[0].attn.heads
        caches = [{"k": self.wte.new_empty(b, blk.attn.heads, length, hd),
                   "v": self.wte.new_empty(b, blk.attn.heads, length, hd)} for blk in self.blocks]
        # prompt pass: positions 0..p hold [sos, X_0..X_{p-1}]
        h = torch.cat([self.sos.expand(b, 1, -1), self.wte[out[:, :p]]], 1) + self.wpe[: p + 1]
        for blk, cache in zip(self.blocks, caches):
            h = blk(h, True, cache, 0)
        out[:, p] = self._pick(self.logits(h[:, -1:])[:, 0], temperature, top_k, generator)
        for t in range(p + 1, length):  # position t holds X_{t-1} and predicts X_t
            h = self.wte[out[:, t - 1 : t]] + self.wpe[t : t + 1]  # (B, 1, D)
            for blk, cache in zip(self.blocks, caches):
                h = blk(h, True, cache, t)
            out[:, t] = self._pick(self.logits(h)[:, 0], temperature, top_k, generator)
        return out


class BernoulliTokens(nn.Module):
    """BERT masking of iGPT: every position hidden independently with probability ``p``.

    ``sample_noise`` draws one image's uniforms in the data loader (seeded by (seed, epoch,
    index), so masks do not depend on the number of processes and resume exactly);
    ``hidden(noise)`` = noise < p.
    """

    def __init__(self, p: float, num_tokens: int):
        super().__init__()
        self.p, self.num_tokens = p, num_tokens

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.num_tokens, generator=generator)

    def draw(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
        return torch.rand(batch, self.num_tokens, generator=g).to(device)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return noise < self.p  # (B, L) True = hidden


class IGPT(MethodModel):
    """Generative pretraining from pixels: AR or BERT over k-means palette tokens."""

    visualizer = "igpt_completions"

    @attrs.define(kw_only=True)
    class Config:
        n_px: int = attrs.field(default=32, validator=_positive)  # images are downsampled to n_px x n_px
        channels: int = attrs.field(default=3, validator=attrs.validators.in_((1, 3)))
        palette: PaletteConfig = attrs.field(factory=PaletteConfig)
        n_layer: int = attrs.field(default=24, validator=_positive)
        n_embd: int = attrs.field(default=512, validator=_positive)
        n_head: int = attrs.field(default=8, validator=_positive)
        mlp_ratio: float = 4.0
        objective: str = attrs.field(default="ar", validator=one_of("ar", "bert"))
        bert_mask_prob: float = 0.15
        probe_layer: int | None = None  # features() layer; default n_layer // 2 (mid-network wins)
        clf_weight: float = 0.0  # > 0: fine-tuning loss = generative + clf_weight * classification
        num_classes: int = 10
        input_key: str = "image"

    def __init__(self, config: "IGPT.Config", env: Any = None):
        super().__init__()
        c = config
        if c.n_embd % c.n_head:
            raise ConfigError(f"invalid value {c.n_embd} for 'model.n_embd': must be divisible by model.n_head={c.n_head}")
        if not 0.0 < c.bert_mask_prob < 1.0:
            raise ConfigError(f"invalid value {c.bert_mask_prob} for 'model.bert_mask_prob': must be in (0, 1)")
        probe = c.n_layer // 2 if c.probe_layer is None else c.probe_layer
        if not 0 <= probe <= c.n_layer:
            raise ConfigError(f"invalid value {c.probe_layer} for 'model.probe_layer': must be in 0..{c.n_layer}")
        self.config, self.input_key = c, c.input_key
        self.encoder = IGPTTransformer(n_px=c.n_px, channels=c.channels, palette=c.palette, n_layer=c.n_layer,
                                       n_embd=c.n_embd, n_head=c.n_head, mlp_ratio=c.mlp_ratio,
                                       objective=c.objective, probe_layer=probe)
        self.masker = BernoulliTokens(c.bert_mask_prob, self.encoder.seq_len) if c.objective == "bert" else None
        self.clf = None
        if c.clf_weight > 0:
            self.clf = nn.Linear(c.n_embd, c.num_classes, bias=False)
            nn.init.zeros_(self.clf.weight)  # official wclf init

    @property
    def palette(self) -> Palette:
        return self.encoder.palette

    def explicit_hidden(self, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The BERT objective's explicit mask: a boolean (B, L) map over the pixel sequence (True =
        hidden, L = n_px * n_px); rows may hide different counts (the loss is a per-image mean)."""
        if self.masker is None:
            raise ConfigError("mask: model.objective=ar has no mask (it predicts every pixel from the ones before "
                              "it); an explicit mask needs model.objective=bert")
        n = self.encoder.seq_len
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch_size, n):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConfigError(f"mask must be a boolean (B, L) = ({batch_size}, {n}) map over the pixel sequence "
                              f"(True = hidden, L = model.n_px^2), got {got}")
        return mask

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step. ``mask`` (BERT only): an explicit boolean (B, L) map over the pixel sequence,
        True = hidden, in place of the Bernoulli draw from ``noise``."""
        ctx = ctx if ctx is not None else Context()
        enc = self.encoder
        if mask is not None and noise is not None:
            raise ConfigError("iGPT: pass either noise or mask, not both (the noise only draws the BERT mask)")
        if mask is not None:
            x = batch[self.input_key]
            mask = self.explicit_hidden(mask, x.shape[0]).to(x.device)
        tokens = enc.tokenize(batch[self.input_key])  # (B, L)
        hidden = None
        if mask is not None:
            hidden = mask
        elif self.masker is not None:
            hidden = self.masker(step_noise(self.masker, batch, ctx, noise, tokens.shape[0], tokens.device))  # (B, L)
        h = enc.hidden_states(enc.embed(tokens, hidden))[-1]  # (B, L, D)
        logits = enc.logits(h)  # (B, L, K)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none").view_as(tokens)  # (B, L)
        out = Outputs(pred=logits, target=tokens, latent=h, pred_scope="all")
        if hidden is None:  # AR: every position
            gen = ce.mean()
            name = "ar"
        else:  # BERT: masked positions, averaged per image, then over images
            m = hidden.float()
            gen = ((ce * m).sum(1) / m.sum(1).clamp(min=1.0)).mean()
            name = "bert"
            out.extra["hidden"] = hidden
        out.losses[name] = gen
        out.losses["bits_per_dim"] = gen.detach() / (math.log(2) * self.config.channels)
        loss = gen
        if self.clf is not None and "label" in batch:
            clf_logits = self.clf(enc.ln_f(h).mean(1))  # average pool of the final states
            clf = F.cross_entropy(clf_logits.float(), torch.as_tensor(batch["label"], device=h.device))
            out.losses["clf"] = clf
            out.extra["clf_logits"] = clf_logits
            loss = loss + self.config.clf_weight * clf
        out.loss = loss
        return out

    @torch.no_grad()
    def features(self, x: torch.Tensor, pool: str = "mean", layer: int | None = None) -> torch.Tensor:
        """Average-pooled normalized features of block ``layer`` (default ``probe_layer``): (B, D)."""
        return self.encoder.pool(self.encoder.forward_features(x, layer))
