"""What the frozen-feature protocols read: the last K blocks' [CLS] (``--n-last-blocks``, the
DINO/iBOT linear protocol) against timm's own ``get_intermediate_layers``; one source of truth
for the protocols' defaults (their Config) shared by the Python functions and the CLI flags."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import attrs
import pytest
import torch

import mimkit
from mimkit import evaluate as ev
from mimkit.data import DEBIAN_FASHION_MNIST

needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from mimkit.export import export

    torch.manual_seed(0)
    model = mimkit.build({"method": "mae_tiny_fashion_mnist",
                          "model": {"encoder": {"embed_dim": 48, "depth": 3, "num_heads": 3}}})
    path = tmp_path_factory.mktemp("src") / "tiny.safetensors"
    export(model, path, "full")
    return path


def test_last_blocks_features_equal_timms_intermediate_layers(source) -> None:
    model = ev.load_source(source)
    enc = model.encoder
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = enc.vit.get_intermediate_layers(x, n=2, return_prefix_tokens=True, norm=True)  # ((patches, prefix), ...)
        f2 = ev.encoder_features(enc, x, "cls", n_last_blocks=2)
        f1 = ev.encoder_features(enc, x, "cls", n_last_blocks=1)
        f3m = ev.encoder_features(enc, x, "mean", n_last_blocks=3)
    assert f2.shape == (4, 2 * 48)
    torch.testing.assert_close(f2, torch.cat([prefix[:, 0] for _, prefix in ref], -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(f1, enc.forward_features(x)[:, 0], rtol=0, atol=1e-6)  # K=1: the usual [CLS]
    torch.testing.assert_close(f2[:, 48:], f1, rtol=0, atol=1e-6)  # the last block's part is the final [CLS]
    with torch.no_grad():
        ref3 = enc.vit.get_intermediate_layers(x, n=3, norm=True)
    torch.testing.assert_close(f3m, torch.cat([p.mean(1) for p in ref3], -1), rtol=0, atol=1e-6)
    with pytest.raises(mimkit.ConfigError, match=r"n_last_blocks must be in \[1, 3\].*got 4"):
        ev.encoder_features(enc, x, "cls", n_last_blocks=4)


@needs_fmnist
def test_linprobe_n_last_blocks_through_the_cli(source, tmp_path) -> None:
    from mimkit.cli import main

    out = tmp_path / "lp.json"
    assert main(["eval", "linprobe", str(source), "--n-last-blocks", "2", "--epochs", "2", "--warmup-epochs", "1",
                 "--batch-size", "32", "--limit-train", "96", "--limit-test", "32", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["n_last_blocks"] == 2 and rec["feature_dim"] == 96 and rec["num_train"] == 96
    # the features the probe trained on are the concatenation computed directly
    model = ev.load_source(source)
    train_ds, _ = ev.eval_datasets(model.recipe)
    sub = torch.utils.data.Subset(train_ds, range(8))
    feats, labels = ev.extract_features(model, sub, "cls", batch_size=4, n_last_blocks=2)
    x = torch.stack([train_ds[i]["image"] for i in range(8)])
    with torch.no_grad():
        ref = model.encoder.vit.get_intermediate_layers(x, n=2, return_prefix_tokens=True, norm=True)
    torch.testing.assert_close(feats, torch.cat([prefix[:, 0] for _, prefix in ref], -1), rtol=0, atol=1e-5)
    assert labels.tolist() == [int(train_ds[i]["label"]) for i in range(8)]


@pytest.mark.parametrize("fn,cls", [(ev.knn, ev.KNN), (ev.linprobe, ev.LinProbe), (ev.finetune, ev.FineTune)])
def test_protocol_functions_take_their_defaults_from_the_config(fn, cls, source) -> None:
    """The functions repeat no default: their only keyword is ``out``; every other option is a
    Config field (the CLI's flags), and unknown or invalid ones are refused before any work."""
    params = inspect.signature(fn).parameters
    assert [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY] == ["out"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    config = ev.protocol_config(cls, {"seed": 3, "val_root": Path("/x")}, cls.__name__)
    assert config == attrs.evolve(cls.Config(), seed=3, val_root="/x")
    with pytest.raises(mimkit.ConfigError, match="temprature"):
        fn(source, temprature=0.1)
    with pytest.raises(mimkit.ConfigError, match="init"):
        fn(source, init="pretrianed")
