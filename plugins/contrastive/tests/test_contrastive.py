"""InfoNCE against a hand-computed example, its variants and memory bank; the two-view dataset;
the CMAE and MACRL tiny presets train."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mimkit.components import BuildEnv
from mimkit.config import resolve
from mimkit.api import build_dataset
from mimkit.data import SeededDataset
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit.types import Outputs
from mimkit_contrastive import InfoNCE


def nce(**kw) -> InfoNCE:
    return InfoNCE(InfoNCE.Config(**kw), BuildEnv(registry=None))


def test_infonce_matches_a_hand_computed_example() -> None:
    # q and k already unit-norm; 2 samples in 2-D
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # q0.k0 = 1, q0.k1 = 0.6; q1.k0 = 0, q1.k1 = 0.8
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.6 / tau)))
    l1 = -math.log(math.exp(0.8 / tau) / (math.exp(0 / tau) + math.exp(0.8 / tau)))
    expect = (l0 + l1) / 2
    out = Outputs(extra={"a": q, "b": k})
    loss = nce(query="a", key="b", query_pool="none", key_pool="none", temperature=tau)
    assert loss(out, {}).item() == pytest.approx(expect, rel=1e-6)
    # k -> q direction: k0.q = (1, 0), k1.q = (0.6, 0.8)
    r0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    r1 = -math.log(math.exp(0.8 / tau) / (math.exp(0.6 / tau) + math.exp(0.8 / tau)))
    sym = nce(query="a", key="b", query_pool="none", key_pool="none", temperature=tau, symmetric=True)
    assert sym(out, {}).item() == pytest.approx(0.5 * (expect + (r0 + r1) / 2), rel=1e-6)
    two_tau = nce(query="a", key="b", query_pool="none", key_pool="none", temperature=tau, scale_2tau=True)
    assert two_tau(out, {}).item() == pytest.approx(2 * tau * expect, rel=1e-6)


def test_infonce_normalizes_pools_and_stops_key_gradients() -> None:
    torch.manual_seed(0)
    lat = torch.randn(4, 5, 3, requires_grad=True)  # (B, 1 + N, D)
    tl = torch.randn(4, 5, 3, requires_grad=True)
    out = Outputs(latent=lat, extra={"teacher_latent": tl})
    loss = nce(query_pool="cls", key_pool="mean", temperature=0.07)(out, {})
    q, k = F.normalize(lat[:, 0], dim=-1), F.normalize(tl[:, 1:].mean(1), dim=-1)
    torch.testing.assert_close(loss, F.cross_entropy(q @ k.t() / 0.07, torch.arange(4)))
    loss.backward()
    assert lat.grad is not None and tl.grad is None


def test_learnable_scale_starts_at_one_over_tau_and_is_clamped() -> None:
    m = nce(learnable_scale=True, temperature=0.07)
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.scale().item() == pytest.approx(100.0)
    assert any(p is m.logit_scale for p in m.parameters())


def test_queue_enqueues_dequeues_and_adds_negatives() -> None:
    torch.manual_seed(0)
    m = nce(query_pool="none", key_pool="none", queue=6, dim=3, temperature=0.2)
    assert "queue" in m.state_dict() and m.queue.shape == (6, 3)
    before = m.queue.clone()
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    out = Outputs(extra={"q": q, "k": k})
    m.config.query, m.config.key = "q", "k"
    loss = m(out, {})
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    logits = qn @ torch.cat([kn, before]).t() / 0.2  # 4 - 1 in-batch + 6 queued negatives per query
    assert logits.shape == (4, 10)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.arange(4)))
    torch.testing.assert_close(m.queue[:4], kn)  # enqueued at the pointer
    torch.testing.assert_close(m.queue[4:], before[4:])
    assert int(m.queue_ptr) == 4
    m(Outputs(extra={"q": q, "k": k * 2}), {})  # wraps around: slots 4, 5, 0, 1
    torch.testing.assert_close(m.queue[4:], kn[:2])
    torch.testing.assert_close(m.queue[:2], kn[2:])
    assert int(m.queue_ptr) == 2
    m.eval()
    m(out, {})
    assert int(m.queue_ptr) == 2  # no enqueue outside training


def test_two_views_differ_and_the_shift_is_bounded() -> None:
    r = resolve({"method": "cmae_tiny_fashion_mnist", "data": {"base": {"limit": 32}}})
    ds = SeededDataset(build_dataset(r), seed=0)
    assert ds.dataset.shift == 4  # round(31 * 32 / 224)
    shifts = []
    for i in range(32):
        item = ds[i]
        assert item["image"].shape == item["image_target"].shape == (1, 32, 32)
        assert not torch.equal(item["image"], item["image_target"])
        assert int(item["shift"].abs().max()) <= 4
        shifts.append(item["shift"])
        again = ds[i]  # seeded per (seed, epoch, index): reproducible
        assert torch.equal(again["image_target"], item["image_target"])
    assert torch.stack(shifts).abs().sum() > 0
    # without color ops the target is the master image crop at the shifted offset
    r = resolve({"method": "cmae_tiny_fashion_mnist", "data": {"base": {"limit": 8}, "target_aug": "weak"}})
    ds = build_dataset(r)
    torch.manual_seed(1)
    item = ds[3]
    dy, dx = item["shift"].tolist()
    s = 32
    a, b = item["image"][0], item["image_target"][0]
    # overlapping region of the two crops is identical
    ya, yb = max(0, dy), max(0, -dy)
    xa, xb = max(0, dx), max(0, -dx)
    h, w = s - abs(dy), s - abs(dx)
    torch.testing.assert_close(a[ya : ya + h, xa : xa + w], b[yb : yb + h, xb : xb + w])


@pytest.mark.parametrize("method,falling", [("cmae_tiny_fashion_mnist", ("loss", "loss/pix")),
                                            ("macrl_tiny_fashion_mnist", ("loss", "loss/rec_high", "loss/rec_low"))])
def test_tiny_presets_train_with_finite_falling_loss(method: str, falling: tuple, tmp_path: Path) -> None:
    """10 steps of 32 image pairs: every term finite; the total and the reconstruction terms fall
    (means of 3 steps; the InfoNCE term alone is too noisy this early); resuming is exact."""
    over = tiny_overrides(method, limit=512, batch_size=32) | {
        "model": {"encoder": {"embed_dim": 96, "depth": 2}, "decoder": {"embed_dim": 64, "depth": 1}},
        "optim": {"warmup_epochs": 0.2}}
    check_preset_trains(method, tmp_path, over, steps=10, expect_fall=falling, window=3)


def test_fine_tuning_trains_on_the_wrapped_data_not_on_the_pretraining_views():
    from mimkit.components.datasets import FashionMNIST
    from mimkit.evaluation.common import eval_datasets
    from mimkit_contrastive.views import TwoViews

    r = resolve({"method": "attmask_tiny_fashion_mnist", "data": {"base": {"limit": 16}}})
    probe_train, _ = eval_datasets(r)  # k-NN / linear probe: the wrapper's un-augmented centre view
    assert isinstance(probe_train, TwoViews)
    ft_train, _ = eval_datasets(r, train_augment=True, crop_scale=(0.5, 1.0))
    assert isinstance(ft_train, FashionMNIST)
    assert ft_train.config.crop_scale == (0.5, 1.0) and ft_train.config.img_size == 32
    item = ft_train[3]
    assert "image_target" not in item and item["image"].shape == (1, 32, 32)  # one image, no second view
    plain, _ = eval_datasets(r, train_augment=True)
    assert plain.config.crop_scale == FashionMNIST.Config().crop_scale  # no override: the base's own crop
