"""Training on one's own images, through the CLI, as a new user would (issue 20): the model
follows the data's geometry, evaluation data follows the data, and nothing after the last
checkpoint can fail a finished run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.config import resolve
from mimkit.errors import ConfigError

SMALL = ["--set", "train.progress=false", "--set", "train.log_every=1"]


def _images(folder: Path, n: int, mode: str, seed: int = 0, suffix: str = ".jpg") -> Path:
    """n images of mixed sizes (and a few of another mode) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        img = Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8), mode)
        if i % 7 == 3:  # mixed modes: a palette PNG, an RGBA PNG
            img.convert("P" if i % 2 else "RGBA").save(folder / f"img{i:03d}.png")
        else:
            img.save(folder / f"img{i:03d}{suffix}")
    return folder


def _shrink() -> list[str]:
    """The model smaller (depth only: widths and geometry stay the preset's / the data's)."""
    return ["--set", "model.encoder.depth=1", "--set", "model.decoder.depth=1"]


def _result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def test_rgb_jpeg_folder_with_the_fashion_mnist_preset(tmp_path, capsys):
    """The issue's recipe, verbatim: the encoder takes 3 channels from the data, the preset's
    Fashion-MNIST eval_data is dropped, the k-NN is skipped with one line, pictures are drawn."""
    imgs = _images(tmp_path / "imgs", 40, "RGB")
    recipe = tmp_path / "my.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "mae_tiny_fashion_mnist", "name": "mine", "output_dir": str(tmp_path / "runs"),
        "data": {"name": "image_folder", "root": str(imgs), "img_size": 32, "channels": 3},
        "train": {"max_steps": 3, "batch_size": 8, "knn_every": 2},
    }))
    assert main(["train", str(recipe), *SMALL, *_shrink()]) == 0
    run = tmp_path / "runs" / "mine"
    assert _result(run)["status"] == "finished" and _result(run)["step"] == 3
    assert (run / "reconstructions.png").stat().st_size > 1000
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["model"]["encoder"]["in_chans"] == 3 and saved["model"]["encoder"]["img_size"] == 32
    assert saved["eval_data"] is None
    err = capsys.readouterr().err
    assert err.count("online k-NN skipped") == 1 and "no labelled held-out split" in err
    # afterwards: the pictures again, and the export, from the run folder
    assert main(["visualize", str(run), "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_grayscale_folder_with_an_rgb_paper_preset(tmp_path):
    """`mim train mae_vit_base_patch16 --set data.root=GRAY`: grayscale (and palette) files are
    converted to the preset's 3 channels; the ViT-B follows data.img_size (32 -> 2x2 patches)."""
    gray = _images(tmp_path / "gray", 16, "L", seed=1, suffix=".png")
    args = ["train", "mae_vit_base_patch16", "--set", f"data.root={gray}", "--set", "data.img_size=32",
            "--set", f"output_dir={tmp_path / 'runs'}", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
            "--set", "train.grad_accum=1", "--set", "train.num_workers=0", "--set", "train.mixed_precision=no", *SMALL, *_shrink()]
    assert main(args) == 0
    run = tmp_path / "runs" / "mae_vit_base_patch16"
    assert _result(run)["status"] == "finished"
    assert (run / "reconstructions.png").stat().st_size > 1000
    enc = yaml.safe_load((run / "recipe.yaml").read_text())["model"]["encoder"]
    assert (enc["in_chans"], enc["img_size"]) == (3, 32)


@pytest.mark.parametrize("key, value, data_key", [
    ("model.encoder.in_chans", "1", "data.channels"),
    ("model.encoder.img_size", "64", "data.img_size"),
])
def test_explicit_mismatch_fails_before_training_naming_both_keys(tmp_path, capsys, key, value, data_key):
    imgs = _images(tmp_path / "imgs", 4, "RGB")
    out = tmp_path / "runs"
    code = main(["train", "mae_tiny_fashion_mnist", "--set", "data.name=image_folder", "--set", f"data.root={imgs}",
                 "--set", "data.img_size=32", "--set", f"output_dir={out}", "--set", f"{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{key}={value}" in err and data_key in err
    assert not out.exists()  # nothing ran, nothing was written


def test_geometry_is_derived_and_eval_data_follows_the_data(tmp_path):
    imgs = _images(tmp_path / "imgs", 2, "RGB")
    preset = resolve("mae_tiny_fashion_mnist")
    assert preset.model["encoder"]["in_chans"] == 1 and preset.eval_data["channels"] == 1
    # same source, other size: model and eval_data follow
    bigger = resolve("mae_tiny_fashion_mnist", ["data.img_size=64"])
    assert bigger.model["encoder"]["img_size"] == 64 and bigger.eval_data["img_size"] == 64
    # another source: the preset's eval_data is dropped unless the recipe names one
    mine = resolve({"method": "mae_tiny_fashion_mnist", "data": {"name": "image_folder", "root": str(imgs)}})
    assert mine.eval_data is None and mine.model["encoder"]["img_size"] == 224
    kept = resolve({"method": "mae_tiny_fashion_mnist", "data": {"name": "image_folder", "root": str(imgs)},
                    "eval_data": {"name": "image_folder", "root": str(imgs)}})
    assert kept.eval_data["channels"] == 3 and kept.eval_data["img_size"] == 224
    with pytest.raises(ConfigError, match=r"eval_data.channels=1 does not match data.channels=3"):
        resolve({"method": "mae_tiny_fashion_mnist", "data": {"name": "image_folder", "root": str(imgs)},
                 "eval_data": {"name": "fashion_mnist", "channels": 1}})
    # a recipe that states no data (an importer's, a model-only one) keeps its model as written
    assert resolve({"model": {"encoder": {"name": "vit", "in_chans": 3, "img_size": 224}}}).model["encoder"]["in_chans"] == 3
    with pytest.raises(ConfigError, match=r"model.encoder.img_size.*not divisible by the patch size"):
        mimkit.build(resolve("mae_tiny_fashion_mnist", ["data.img_size=30"]))


def test_labelled_folder_with_a_val_folder_beside_it_probes_online(tmp_path):
    for split in ("train", "val"):
        for k, cls in enumerate(("cats", "dogs")):
            _images(tmp_path / "set" / split / cls, 8, "RGB", seed=10 * k + (split == "val"))
    run = mimkit.train({"method": "mae_tiny_fashion_mnist", "name": "lab", "output_dir": str(tmp_path / "runs"),
                        "data": {"name": "image_folder", "root": str(tmp_path / "set" / "train"), "img_size": 16},
                        "model": {"encoder": {"depth": 1}, "decoder": {"depth": 1}},
                        "train": {"max_steps": 2, "batch_size": 8, "knn_every": 2, "progress": False}})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["knn_top1"] for r in rows if "knn_top1" in r][0] in {k / 16 for k in range(17)}  # 16 val images


def test_a_failure_after_the_last_checkpoint_never_fails_the_run(tmp_path, monkeypatch, capsys):
    import mimkit.trainer as trainer

    def broken(*_a, **_k):
        raise RuntimeError("boom in the pictures")

    monkeypatch.setattr(trainer, "_pictures", broken)
    imgs = _images(tmp_path / "imgs", 8, "RGB")
    run = mimkit.train({"method": "mae_tiny_fashion_mnist", "name": "b", "output_dir": str(tmp_path / "runs"),
                        "data": {"name": "image_folder", "root": str(imgs), "img_size": 16},
                        "model": {"encoder": {"depth": 1}, "decoder": {"depth": 1}},
                        "train": {"max_steps": 1, "batch_size": 8, "progress": False}})
    assert _result(run)["status"] == "finished"
    from mimkit.checkpoint import latest

    assert latest(run / "checkpoints").name.endswith("1")  # the final checkpoint is complete
    assert "boom in the pictures" in capsys.readouterr().err


def test_class_folders_alone_hold_out_a_stable_labelled_split(tmp_path, capsys):
    from mimkit.api import build_dataset, held_out_dataset

    for k, cls in enumerate(("a", "b")):
        _images(tmp_path / "set" / cls, 10, "RGB", seed=k)
    recipe = resolve({"method": "mae_tiny_fashion_mnist", "data": {"name": "image_folder", "root": str(tmp_path / "set"),
                                                                    "img_size": 16}})
    train, test = build_dataset(recipe), held_out_dataset(recipe)
    assert (len(train), len(test)) == (18, 2) and sorted(k for _, k in test.samples) == [0, 1]
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert "2 of the 20 images" in capsys.readouterr().out
    moved = tmp_path / "moved"
    (tmp_path / "set").rename(moved)  # the choice depends on the names, not on where the folder is
    again = held_out_dataset(resolve(recipe, [f"data.root={moved}"]))
    assert {p.relative_to(moved) for p, _ in again.samples} == {p.relative_to(tmp_path / "set") for p, _ in test.samples}
    flat = resolve({"method": "mae_tiny_fashion_mnist", "data": {"name": "image_folder", "root": str(moved / "a")}})
    assert held_out_dataset(flat) is None and len(build_dataset(flat)) == 10  # unlabelled: all of it trains


def test_a_folder_of_images_as_fashion_mnist_root_says_what_to_set(tmp_path, capsys):
    imgs = _images(tmp_path / "imgs", 2, "RGB")
    assert main(["train", "mae_tiny_fashion_mnist", "--set", f"data.root={imgs}", "--set", f"output_dir={tmp_path}"]) == 2
    assert "data.name=image_folder" in capsys.readouterr().err
