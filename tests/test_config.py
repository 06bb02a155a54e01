"""Recipes: presets, overrides, and errors that name the key, the value and what is allowed."""
import pytest
import yaml

import mimkit
from mimkit.config import deep_merge, resolve
from mimkit.errors import ConfigError


def test_deep_merge_mappings_merge_lists_replace():
    out = deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    # naming another component replaces the mapping instead of merging foreign options into it
    out = deep_merge({"data": {"name": "fashion_mnist", "split": "train"}}, {"data": {"name": "image_folder", "root": "x"}})
    assert out == {"data": {"name": "image_folder", "root": "x"}}


def test_preset_and_override():
    pytest.importorskip("mimkit_mae")
    r = resolve({"method": "mae_vit_large_patch16"}, ["model.masker.ratio=0.9", "train.batch_size=8"])
    assert r.model["encoder"]["model"] == "vit_large_patch16_224"  # from the large preset
    assert r.model["decoder"]["depth"] == 8 and r.optim.base_lr == 1.5e-4  # inherited from base
    assert r.model["masker"]["ratio"] == 0.9 and r.train.batch_size == 8


def test_unknown_component_lists_registered_names_and_providers():
    with pytest.raises(ConfigError) as e:
        mimkit.build({"model": {"masker": {"name": "nope"}}})
    msg = str(e.value)
    assert "model.masker" in msg and "'nope'" in msg and "random (mimkit (builtin))" in msg


def test_bad_value_names_key_path_and_value():
    with pytest.raises(ConfigError, match=r"train.batch_size.*'many'|'many'.*train.batch_size"):
        resolve({"train": {"batch_size": "many"}})
    with pytest.raises(ConfigError, match=r"mixed_precision.*\['no', 'bf16', 'fp16', 'auto'\]"):
        resolve({"train": {"mixed_precision": "fp8"}})
    with pytest.raises(ConfigError, match="model.encoder.pos_embed"):
        mimkit.build({"model": {"encoder": {"name": "vit", "pos_embed": "rope"}}})
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'; allowed keys here: epochs"):
        resolve({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="train.batch_size"):
        resolve({"train": {"batch_size": 1.5}})  # no silent truncation


def test_yaml_python_tags_are_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    f.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        resolve(f)
    assert not marker.exists()


def test_set_override_parses_yaml_scalars(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"name": "x"}))
    r = resolve(f, ["optim.clip_grad=3.0", "train.compile=true", "optim.betas=[0.9, 0.99]"])
    assert r.optim.clip_grad == 3.0 and r.train.compile is True and r.optim.betas == (0.9, 0.99)
    assert resolve(f, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML's `no` is false
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        resolve(f, ["novalue"])


def test_missing_data_path_is_named(tmp_path):
    from mimkit.api import build_dataset
    from mimkit.errors import DataError

    r = resolve({"data": {"name": "image_folder", "root": str(tmp_path / "missing")}})
    with pytest.raises(DataError, match="missing"):
        build_dataset(r)


def test_fashion_mnist_from_a_torchvision_layout(tmp_path):
    import gzip

    import numpy as np

    from mimkit.api import build_dataset

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    header = np.array([2051, 3, 28, 28], dtype=">i4").tobytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(header + images.tobytes())  # uncompressed works too
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([2049, 3], dtype=">i4").tobytes() + bytes([7, 1, 9]))
    ds = build_dataset(resolve({"data": {"name": "fashion_mnist", "root": str(tmp_path), "split": "test",
                                         "augment": False}}))
    assert len(ds) == 3 and [ds[i]["label"] for i in range(3)] == [7, 1, 9]
    x = ds[1]["image"]  # padded to 32x32, normalized
    assert x.shape == (1, 32, 32)
    pixel = x[0, 2 + 5, 2 + 6] * 0.3530 + 0.2860
    assert pixel.item() == pytest.approx(images[1, 5, 6] / 255, abs=1e-5)
