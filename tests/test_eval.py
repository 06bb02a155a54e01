"""Evaluation protocols: k-NN weighting, the labels-fraction split, linear probe, fine-tuning.

Kept small for 2 CPU cores: synthetic features where the number is known exactly, and a
few hundred Fashion-MNIST images through a randomly initialized tiny MAE (whose frozen
features are already far better than chance on Fashion-MNIST).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mimkit
from mimkit import evaluate as ev
from mimkit.data import DEBIAN_FASHION_MNIST

needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """A full export of a randomly initialized (seed 0) tiny MAE: a one-file source."""
    from mimkit.export import export

    torch.manual_seed(0)
    recipe = mimkit.resolve({"method": "mae_tiny_fashion_mnist"})
    model = mimkit.api.build_model(recipe)
    model.recipe = recipe
    path = tmp_path_factory.mktemp("src") / "tiny.safetensors"
    export(model, path, "full")
    return path


# -- k-NN ----------------------------------------------------------------------------------


def test_knn_weighting_matches_direct_computation():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])  # unit vectors
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.0]])  # normalized to (1, 0): sims 1, 0.8, 0, -1
    t = 0.5
    scores = ev.knn_predict(train, labels, test, num_classes=3, k=3, temperature=t)
    # the 3 nearest are indices 0 (sim 1), 1 (sim .8), 2 (sim 0): votes exp(sim / T)
    expected = torch.tensor([[math.exp(1 / t), math.exp(0.8 / t) + math.exp(0.0), 0.0]])
    torch.testing.assert_close(scores, expected)
    # k=1: only the nearest votes; k larger than the training set is capped
    assert ev.knn_predict(train, labels, test, 3, k=1, temperature=t).argmax(1).item() == 0
    assert ev.knn_predict(train, labels, test, 3, k=50, temperature=t)[0, 2] == pytest.approx(math.exp(-1 / t))


def test_knn_separable_features_are_perfect_and_topk():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(5, 16) * 10  # 5 well separated directions in 16-d
    train_y = torch.arange(5).repeat_interleave(40)
    test_y = torch.arange(5).repeat_interleave(10)
    train = centers[train_y] + torch.randn(200, 16, generator=g)
    test = centers[test_y] + torch.randn(50, 16, generator=g)
    scores = ev.knn_predict(train, train_y, test, 5, k=20, temperature=0.07, chunk=7)  # chunking must not matter
    acc = ev.topk_accuracy(scores, test_y)
    assert acc == {"top1": 1.0, "top5": 1.0}
    # shuffled labels: accuracy near chance, and the k=5 capped top-5 of 5 classes is always 1
    perm = torch.randperm(200, generator=g)
    acc_bad = ev.topk_accuracy(ev.knn_predict(train, train_y[perm], test, 5), test_y)
    assert acc_bad["top1"] < 0.5 and acc_bad["top5"] == 1.0


# -- labels-fraction split -----------------------------------------------------------------


def test_split_is_class_balanced_deterministic_and_recorded():
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(1).permutation(1000)]
    a = ev.class_balanced_split(labels, 0.1, seed=3)
    b = ev.class_balanced_split(labels, 0.1, seed=3)
    c = ev.class_balanced_split(labels, 0.1, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert np.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert ev.indices_hash(a) == ev.indices_hash(b) != ev.indices_hash(c)
    # 1% of 100 per class = 1 each; tiny fractions still keep one example per class
    assert np.bincount(labels[ev.class_balanced_split(labels, 0.001, 0)], minlength=10).tolist() == [1] * 10
    with pytest.raises(mimkit.ConfigError):
        ev.class_balanced_split(labels, 0.0, 0)

    class Fake(torch.utils.data.Dataset):
        def __init__(self):
            self.labels = torch.from_numpy(labels)

        def __len__(self):
            return len(self.labels)

    sub, rec = ev.select_train(Fake(), 0.1, split_seed=3, limit_train=None)
    assert sub.indices == a.tolist()
    assert rec["split_seed"] == 3 and rec["num_train"] == 100 and rec["labels_fraction"] == 0.1
    assert rec["indices_sha256"] == ev.indices_hash(a) and set(rec["per_class"].values()) == {10}
    _, rec_all = ev.select_train(Fake(), None, 0, limit_train=50)
    assert rec_all["num_train"] == 50 and rec_all["indices_sha256"] == ev.indices_hash(np.arange(50))


# -- linear probe --------------------------------------------------------------------------


def test_linear_probe_learns_informative_features():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 4, generator=g)
    x = torch.randn(600, 32, generator=g) * 3 + 5  # un-normalized: the affine-free BN handles it
    y = (x @ w).argmax(1)  # linearly separable labels
    probe = ev.train_linear_probe(x[:500], y[:500], 4, epochs=30, batch_size=64, blr=0.5, warmup_epochs=3)
    assert isinstance(probe.bn, torch.nn.BatchNorm1d) and not probe.bn.affine and probe.bn.eps == 1e-6
    with torch.no_grad():
        acc = ev.topk_accuracy(probe(x[500:]), y[500:], (1,))["top1"]
    assert acc > 0.85
    probe_lars = ev.train_linear_probe(x[:500], y[:500], 4, epochs=30, batch_size=64, blr=50.0,
                                       warmup_epochs=3, optimizer="lars")
    with torch.no_grad():
        assert ev.topk_accuracy(probe_lars(x[500:]), y[500:], (1,))["top1"] > 0.6


def test_cosine_lr_schedule():
    assert ev.cosine_lr(0, 1.0, 10, 110) == 0.0
    assert ev.cosine_lr(5, 1.0, 10, 110) == pytest.approx(0.5)
    assert ev.cosine_lr(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert ev.cosine_lr(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert ev.cosine_lr(110, 1.0, 10, 110, min_lr=0.1) == pytest.approx(0.1)


@needs_fmnist
def test_knn_and_linprobe_on_tiny_model(tiny_source, tmp_path):
    from mimkit.cli import main

    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(tiny_source), "--limit-train", "300", "--limit-test", "100",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"] == "knn" and rec["k"] == 20 and rec["temperature"] == 0.07
    assert rec["num_train"] == 300 and rec["num_test"] == 100 and rec["split_seed"] == 0
    assert 0.3 < rec["top1"] <= 1.0 and rec["top5"] >= rec["top1"]  # chance is 0.1

    lp = ev.linprobe(tiny_source, init="pretrained", labels_fraction=0.5, split_seed=1, limit_train=300,
                     limit_test=100, epochs=20, batch_size=64, warmup_epochs=2, pool="mean",
                     out=tmp_path / "lp.json")
    assert json.loads((tmp_path / "lp.json").read_text()) == lp
    # half of each class of the first 300 items (rounded per class)
    assert lp["num_train"] == sum(lp["per_class"].values()) and 145 <= lp["num_train"] <= 155
    assert 0.3 < lp["top1"] <= 1.0 and 0.0 <= lp["top5"] <= 1.0
    assert len(lp["indices_sha256"]) == 64


@needs_fmnist
def test_finetune_runs_from_pretrained_and_random(tiny_source, tmp_path):
    model = ev.load_source(tiny_source)
    clf = ev.classifier_from_encoder(model, 10, drop_path=0.1)
    # the encoder's weights are carried over; the final norm becomes a fresh fc_norm
    torch.testing.assert_close(clf.blocks[3].attn.qkv.weight, model.encoder.vit.blocks[3].attn.qkv.weight)
    assert isinstance(clf.norm, torch.nn.Identity) and clf.global_pool == "avg"
    assert clf.head.weight.abs().max() < 1e-4

    kw = dict(limit_train=64, limit_test=64, epochs=1, batch_size=16, warmup_epochs=0.5)
    rec = ev.finetune(tiny_source, out=tmp_path / "ft.json", **kw)
    assert rec["protocol"] == "finetune" and rec["steps"] == 4 and rec["num_test"] == 64
    assert 0.0 <= rec["top1"] <= 1.0 and math.isfinite(rec["final_train_loss"])
    rnd = ev.finetune(tiny_source, init="random", seed=1, mixup=0.0, cutmix=0.0, **kw)
    assert rnd["init"] == "random" and 0.0 <= rnd["top1"] <= 1.0


@needs_fmnist
def test_random_init_differs_from_source(tiny_source):
    a = ev.load_source(tiny_source)
    b = ev.load_source(tiny_source, init="random", seed=5)
    c = ev.load_source(tiny_source, init="random", seed=5)
    x = torch.randn(2, 1, 32, 32)
    assert not torch.allclose(a.features(x), b.features(x))
    torch.testing.assert_close(b.features(x), c.features(x))


def test_a_labelled_split_is_a_dataset_capability_not_a_name(tmp_path):
    """An image folder `train/` with a sibling `val/` evaluates through the same protocols
    (and the same `mim eval` path) as Fashion-MNIST, with no special case for its name."""
    import yaml
    from PIL import Image

    from mimkit.cli import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, level in (("dark", 40), ("light", 210)):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                pix = np.clip(level + rng.normal(0, 10, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(pix, "L").save(d / f"{i}.png")
    recipe = {"method": "mae_tiny_fashion_mnist", "eval_data": None,
              "data": {"name": "image_folder", "root": str(tmp_path / "imgs" / "train"), "img_size": 32,
                       "channels": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    train_ds, test_ds = ev.eval_datasets(mimkit.resolve(path))
    assert (len(train_ds), len(test_ds)) == (12, 6) and test_ds.classes == ["dark", "light"]
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(path), "--init", "random", "--k", "3", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["num_train"] == 12 and rec["num_test"] == 6 and rec["k"] == 3
    assert rec["top1"] == 1.0  # two far-apart grey levels: even random features separate them
    # class folders without a sibling val/: 10% of each class (at least 1) is held out
    recipe["data"]["root"] = str(tmp_path / "imgs" / "val")
    train_ds, test_ds = ev.eval_datasets(mimkit.resolve(recipe))
    assert (len(train_ds), len(test_ds)) == (4, 2) and sorted(k for _, k in test_ds.samples) == [0, 1]
    assert not {p for p, _ in train_ds.samples} & {p for p, _ in test_ds.samples}
    # ... unless data.held_out is 0: then no test split, and the error says what to pass
    recipe["data"]["held_out"] = 0
    with pytest.raises(mimkit.ConfigError, match="--val-root"):
        ev.eval_datasets(mimkit.resolve(recipe))
