"""Evaluation of a pretrained encoder: the three protocols of the MAE family, one module each,
registered as ``mim eval knn|linprobe|finetune`` by the core's built-in plugin (through the
same ``mimkit_protocols`` hook as a plugin's protocols), under Hugging Face Accelerate.

* :mod:`~mimkit.evaluation.knn` - weighted k-NN on frozen features (DINO).
* :mod:`~mimkit.evaluation.linprobe` - MAE's linear probe on cached frozen features.
* :mod:`~mimkit.evaluation.finetune` - MAE's end-to-end fine-tuning.

The labelled splits come from the data source's declared capability ``eval_split(config,
split)`` (see :func:`~mimkit.evaluation.common.eval_datasets`), so any dataset that declares it
evaluates the same way.
"""
from __future__ import annotations

from ..schedules import warmup_cosine as cosine_lr
from .common import (
    CommonConfig, class_balanced_split, dataset_labels, encoder_features, eval_datasets, eval_encoder, extract_features,
    head_subset, indices_hash, load_source, make_accelerator, protocol_config, select_train, topk_accuracy, vit_encoder,
)
from .finetune import FineTune, classifier_from_encoder, finetune, timm_kwargs
from .knn import KNN, knn, knn_predict
from .linprobe import LARS, LinearProbe, LinProbe, linprobe, train_linear_probe

#: The built-in protocols (registered by :mod:`mimkit.builtin`).
PROTOCOLS = {"knn": KNN, "linprobe": LinProbe, "finetune": FineTune}

__all__ = [
    "knn", "linprobe", "finetune", "KNN", "LinProbe", "FineTune", "PROTOCOLS", "CommonConfig", "cosine_lr",
    "class_balanced_split", "dataset_labels", "eval_datasets", "eval_encoder", "encoder_features", "extract_features",
    "head_subset", "indices_hash", "load_source", "make_accelerator", "select_train", "topk_accuracy", "vit_encoder",
    "protocol_config", "classifier_from_encoder", "timm_kwargs", "knn_predict", "LARS", "LinearProbe",
    "train_linear_probe",
]
