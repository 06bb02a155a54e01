"""The batched data fast path (mimkit.batchaug, FashionMNIST.get_batch): torchvision's augmentation
exactly, each sample seeded on its own, and the trainer using it."""
import json

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

import mimkit
from mimkit import batchaug
from mimkit.components.datasets import FashionMNIST
from mimkit.data import SeededDataset

from conftest import tiny_recipe


@pytest.mark.parametrize("size_in,size_out", [(32, 32), (50, 32), (32, 48)])
def test_resized_crops_equal_torchvision(size_in, size_out):
    boxes = batchaug.crop_boxes(list(range(64)), size_in, size_in, (0.08, 1.0))
    img = torch.rand(64, 2, size_in, size_in, dtype=torch.float64)
    out = batchaug.resized_crops(img, boxes, size_out)
    ref = torch.stack([
        TF.resized_crop(img[k], int(b[0]), int(b[1]), int(b[2]), int(b[3]), [size_out, size_out],
                        interpolation=TF.InterpolationMode.BICUBIC, antialias=True) for k, b in enumerate(boxes)])
    ref = torch.where(boxes[:, 4].bool().view(-1, 1, 1, 1), ref.flip(-1), ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_crop_boxes_follow_random_resized_crop():
    boxes = batchaug.crop_boxes(list(range(4000)), 32, 32, (0.2, 1.0))
    top, left, h, w, flip = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0  # rounding of h and w
    torch.manual_seed(0)  # torchvision's own draws: the same distribution of area and aspect
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(1, 32, 32), [0.2, 1.0], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float64)
    ref_area = ref[:, 2] * ref[:, 3] / 1024
    assert abs(float(area.mean() - ref_area.mean())) < 0.015 and abs(float(area.std() - ref_area.std())) < 0.015
    ratio = (w / h).log()
    assert ratio.abs().max() <= 0.35 and abs(float(ratio.mean())) < 0.02
    assert abs(float(left.mean() - ref[:, 1].mean())) < 0.3 and abs(float(top.mean() - ref[:, 0].mean())) < 0.3
    assert abs(float(flip.mean()) - 0.5) < 0.03
    assert torch.equal(boxes[17], batchaug.crop_boxes([17], 32, 32, (0.2, 1.0))[0])  # per seed


def _seeded(augment=True, channels=1):
    ds = FashionMNIST(FashionMNIST.Config(limit=64, augment=augment, channels=channels))
    return SeededDataset(ds, seed=3, noise_fn=lambda g: torch.rand(64, generator=g))


def test_a_sample_does_not_depend_on_its_batch():
    sd = _seeded()
    a, b = sd.get_batch([3, 5, 7]), sd.get_batch([9, 5])
    for key in ("image", "mask_noise", "label", "index"):
        assert torch.equal(a[key][1], b[key][1]), key
    assert not torch.equal(a["image"][0], a["image"][2])
    sd.set_epoch(1)
    assert not torch.equal(sd.get_batch([5])["image"][0], a["image"][1])  # a new epoch, a new crop
    sd.set_epoch(0)
    item = sd[5]  # the per-sample path: the same mask noise, label and index
    assert torch.equal(item["mask_noise"], a["mask_noise"][1]) and item["label"] == int(a["label"][1])


@pytest.mark.parametrize("channels", [1, 3])
def test_without_augmentation_equals_the_per_sample_path(channels):
    sd = _seeded(augment=False, channels=channels)
    batch = sd.get_batch([0, 1, 2])
    ref = torch.stack([sd[i]["image"] for i in (0, 1, 2)])
    torch.testing.assert_close(batch["image"], ref, rtol=0, atol=1e-6)


def test_trainer_uses_the_fast_path_and_can_turn_it_off(tmp_path):
    fast = mimkit.train(tiny_recipe(tmp_path, "fast", epochs=0.25))
    slow = mimkit.train(tiny_recipe(tmp_path, "slow", epochs=0.25, batched_data=False, attention="math"))
    meta = json.loads((fast / "meta.json").read_text())["fast_path"]
    assert meta == {"data": "batched", "compile": False, "optimizer": "fused", "attention": "auto"}
    assert json.loads((slow / "meta.json").read_text())["fast_path"]["data"] == "per-sample"


def test_a_subclass_overriding_getitem_keeps_the_per_sample_path():
    class Captioned(FashionMNIST):
        def __getitem__(self, i):
            return super().__getitem__(i) | {"text": "a garment"}

    class CaptionedBatched(Captioned):
        def get_batch(self, indices, seeds):
            return super().get_batch(indices, seeds) | {"text": ["a garment"] * len(indices)}

    cfg = FashionMNIST.Config(limit=8)
    assert SeededDataset(FashionMNIST(cfg), 0).batched
    assert not SeededDataset(Captioned(cfg), 0).batched  # get_batch would drop "text"
    assert SeededDataset(CaptionedBatched(cfg), 0).batched
