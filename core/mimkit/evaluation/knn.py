"""Weighted k-NN on frozen, L2-normalized features (DINO's ``eval_knn``: k=20, T=0.07, cosine
similarity, each neighbour votes for its class with weight exp(sim / T); Caron et al. 2021,
facebookresearch/dino ``eval_knn.py``)."""
from __future__ import annotations

import os
import time
from typing import Any

import attrs
import torch
from torch import nn

from ..schema import in_range, one_of, positive
from .common import CommonConfig, common_record, features_for, finish, protocol_config, record_name, topk_accuracy


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of weighted k-NN (DINO): (M, C).

    Features are L2-normalized; each of the ``k`` most cosine-similar training samples adds
    ``exp(sim / temperature)`` to its class's score.
    """
    train = nn.functional.normalize(train_feats.float(), dim=1)  # (N, D)
    test = nn.functional.normalize(test_feats.float(), dim=1)  # (M, D)
    k = min(k, train.shape[0])
    out = []
    for s in range(0, test.shape[0], chunk):
        sim = test[s : s + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (m, C)
        out.append(votes)
    return torch.cat(out)


def knn(source: str | os.PathLike, *, out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Weighted k-NN accuracy of the source's frozen features; returns (and writes to ``out``)
    the record. ``options`` are the fields of :class:`KNN.Config` (``k``, ``temperature``,
    ``pool``, ``batch_size`` and the common ones: ``init``, ``seed``, ``labels_fraction``,
    ``limit_train``, ...), with its defaults: the same as ``mim eval knn --help`` lists."""
    return KNN(protocol_config(KNN, options, "knn"))([source], out=out)


class KNN:
    """Weighted k-NN accuracy of frozen features (k=20, T=0.07, as DINO). Reads
    ``model.eval_encoder`` when the model defines one (iBOT/AttMask: the teacher)."""

    @attrs.define(kw_only=True)
    class Config(CommonConfig):
        k: int = attrs.field(default=20, validator=positive)
        temperature: float = attrs.field(default=0.07, validator=in_range(0, low_open=True))
        pool: str = attrs.field(default="cls", validator=one_of("cls", "mean"))  # [CLS] or mean of tokens
        batch_size: int = attrs.field(default=256, validator=positive)

    def __init__(self, config: "KNN.Config"):
        self.config = config

    def record_name(self) -> str:
        return record_name("knn", self.config)

    def __call__(self, sources: list[str], out: str | os.PathLike | None = None) -> dict[str, Any]:
        c, source = self.config, sources[0]
        t0 = time.perf_counter()
        model, acc, split, n_cls, (tr_f, tr_y, te_f, te_y) = features_for(source, c, c.pool, c.batch_size)
        scores = knn_predict(tr_f, tr_y, te_f, n_cls, k=c.k, temperature=c.temperature)
        record = common_record("knn", source, c.init, c.seed, model, split, len(te_y))
        record.update({"k": c.k, "temperature": c.temperature, "pool": c.pool, **topk_accuracy(scores, te_y),
                       "seconds": round(time.perf_counter() - t0, 2)})
        record["summary"] = f"knn: top-1 {record['top1']:.4f}  top-5 {record['top5']:.4f}"
        return finish(record, out, acc)
