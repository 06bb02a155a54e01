"""AttMask/iBOT as the official code (gkakogeorgiou/attmask on bytedance/ibot): hint counts from
a second ratio draw, one ratio shared by the global crops, local crops (student only, [CLS]
terms), the per-epoch teacher temperature table, prototypes' default init, norm_last_layer
false, evaluation on the teacher, an explicit mask."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.api import build_dataset
from mimkit.components import BuildEnv
from mimkit.config import resolve
from mimkit.types import Context
from mimkit_attmask import AttentionGuidedMasker, IBOTHead, IBOTLoss, teacher_temp_at

N = 196


class _Enc:
    num_patches = N

    class config:  # noqa: N801
        mode = "with_mask_token"


def test_hint_count_uses_a_second_ratio_draw_and_pool_int_tenth() -> None:
    m = AttentionGuidedMasker(AttentionGuidedMasker.Config(mode="hint", masking_prob=1.0), BuildEnv(registry=None, encoder=_Enc()))
    attn = torch.rand(4, N, generator=torch.Generator().manual_seed(0)).softmax(-1)
    for r_draw, h_draw in [(0.9, 0.1), (0.1, 0.9), (0.5, 0.5)]:
        noise = torch.rand(4, N + 3, generator=torch.Generator().manual_seed(1))
        noise[0, 1], noise[0, 2] = r_draw, h_draw
        r, r2 = 0.1 + 0.4 * r_draw, 0.1 + 0.4 * h_draw
        hidden = m({}, noise, Context(teacher={"teacher_cls_attn": attn})).hidden
        n_hide, n_hint = int(r * N), int(0.1 * r2 * N)  # attmask.py: int(N * r), int(show_max * r' * N)
        pool = attn.topk(int(0.1 * N)).indices  # int(0.1 * 196) = 19 most attended
        for row in range(4):
            high = set(attn[row].topk(n_hide).indices.tolist())
            shown = high - set(hidden[row].nonzero().flatten().tolist())
            assert len(shown) == n_hint and shown <= set(pool[row].tolist())
            assert int(hidden[row].sum()) == n_hide - n_hint


def test_teacher_temperature_is_the_official_per_epoch_table() -> None:
    table = np.concatenate([np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07])
    for e in [0, 1, 10, 29, 30, 99]:
        assert teacher_temp_at(e, 0.04, 0.07, 30) == pytest.approx(table[e])
        assert teacher_temp_at(e + 0.7, 0.04, 0.07, 30) == pytest.approx(table[e])  # constant within an epoch


def test_prototypes_keep_the_default_linear_init() -> None:
    torch.manual_seed(0)
    head = IBOTHead(32, 4096, 64, 256, 3, norm_last_layer=False)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    v = head.last_v.detach()
    assert float(v.abs().max()) <= bound and float(v.abs().max()) > 0.99 * bound
    assert float(v.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert head.last_g.requires_grad and torch.equal(head.last_g, torch.ones(4096, 1))


def test_loss_adds_local_crops_as_cls_terms_only() -> None:
    torch.manual_seed(0)
    b, n, k, L = 3, 5, 7, 4
    loss = IBOTLoss(k, warmup_epochs=0)
    s_cls = [torch.randn(b, k) for _ in range(2)]
    s_patch = [torch.randn(b, n, k) for _ in range(2)]
    t_cls = [torch.randn(b, k) for _ in range(2)]
    t_patch = [torch.randn(b, n, k) for _ in range(2)]
    hidden = [torch.rand(b, n) < 0.5 for _ in range(2)]
    s_loc = [torch.randn(b, k) for _ in range(L)]
    terms = loss(s_cls, s_patch, t_cls, t_patch, hidden, 0.0, s_loc)
    tp = [F.softmax(t / 0.07, -1) for t in t_cls]  # centers start at 0
    ce = lambda t, s: (-(t * F.log_softmax(s / 0.1, -1)).sum(-1)).mean()  # noqa: E731
    students = s_cls + s_loc
    expect = [ce(tp[q], students[v]) for q in range(2) for v in range(2 + L) if v != q]
    assert len(expect) == 2 * (2 + L - 1)  # 22 terms with 10 local crops
    torch.testing.assert_close(terms["cls"], torch.stack(expect).mean())


def test_presets_have_multicrop_and_free_last_layer() -> None:
    big = resolve({"method": "attmask_vit_small_patch16"})
    d, mdl = big.data, big.model
    assert (d["local_crops"], d["local_size"], list(d["local_scale"]), list(d["crop_scale"])) == (10, 96, [0.05, 0.25], [0.25, 1.0])
    assert (d["online_blur_p"], d["target_blur_p"], d["target_solarize_p"], d["local_blur_p"]) == (1.0, 0.1, 0.2, 0.5)
    assert list(d["jitter"]) == [0.4, 0.4, 0.2, 0.1] and mdl["norm_last_layer"] is False
    r = resolve({"method": "attmask_tiny_fashion_mnist", "data": {"base": {"limit": 4}}})
    item = build_dataset(r)[0]
    assert item["image_local"].shape == (2, 1, 16, 16) and item["image"].shape == (1, 32, 32)


def test_solarize_inverts_bright_pixels_of_the_target_view() -> None:
    r = resolve({"method": "attmask_tiny_fashion_mnist",
                 "data": {"base": {"limit": 4}, "target_solarize_p": 1.0, "jitter_p": 0.0, "target_blur_p": 0.0,
                          "online_blur_p": 0.0, "pairing": "shift", "max_shift": 0, "local_crops": 0}})
    ds = build_dataset(r)
    torch.manual_seed(0)
    item = ds[0]
    mean, std = ds.mean[0], ds.std[0]
    a, b = item["image"][0] * std + mean, item["image_target"][0] * std + mean
    torch.testing.assert_close(b, torch.where(a >= 0.5, 1 - a, a), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny():
    return mimkit.build({"method": "attmask_tiny_fashion_mnist",
                         "model": {"encoder": {"embed_dim": 48, "depth": 2, "num_heads": 3}, "out_dim": 64,
                                   "hidden_dim": 32, "bottleneck_dim": 16}})


def _batch(seed: int = 0, local: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(4, 1, 32, 32, generator=g), "image_target": torch.randn(4, 1, 32, 32, generator=g),
            "image_local": torch.randn(4, local, 1, 16, 16, generator=g)}


def test_global_crops_share_one_ratio_and_an_explicit_mask_gives_the_same_step(tiny) -> None:
    m = tiny.train()
    batch = _batch()
    noise = torch.rand(4, 2 * (64 + 3), generator=torch.Generator().manual_seed(3))
    noise[:, 0] = 0.0  # every image masked
    noise[:, 64 + 3] = 0.0
    noise[0, 64 + 3 + 1] = 0.99  # view 2's own ratio draw is ignored: view 1's row 0 decides
    out = m(batch, Context(), noise=noise)
    h1, h2 = (mk.hidden for mk in out.extra["masks"])
    r = 0.1 + 0.4 * float(noise[0, 1])
    r2 = 0.1 + 0.4 * float(noise[0, 2])
    expect = int(r * 64) - int(0.1 * r2 * 64)
    assert (h1.sum(1) == expect).all() and (h2.sum(1) == expect).all()
    m.eval()
    centers = {k: v.clone() for k, v in m.ibot_loss.state_dict().items()}  # the loss moves its centers
    a = m(batch, Context(), noise=noise)
    m.ibot_loss.load_state_dict(centers)
    b = m(batch, Context(), mask=[h1, h2])
    m.ibot_loss.load_state_dict(centers)
    torch.testing.assert_close(a.losses["patch"], b.losses["patch"])
    torch.testing.assert_close(a.losses["cls"], b.losses["cls"])
    # local crops change only the [CLS] term
    c = m({k: v for k, v in batch.items() if k != "image_local"}, Context(), mask=[h1, h2])
    torch.testing.assert_close(c.losses["patch"], a.losses["patch"])
    assert not torch.allclose(c.losses["cls"], a.losses["cls"])


def test_evaluation_reads_the_teacher(tiny) -> None:
    m = tiny.eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        for p in m.teacher.copies["encoder"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    f = m.features(x)
    torch.testing.assert_close(f, m.teacher.copies["encoder"].forward_features(x)[:, 0])
    assert not torch.allclose(f, m.encoder.forward_features(x)[:, 0])
    f4 = m.features(x, pool="last4")
    assert f4.shape == (3, 4 * 48) or f4.shape == (3, 2 * 48)
    enc = m.teacher.copies["encoder"]
    _, layers = enc.encode(enc.embed(x), None, return_layers=True)
    torch.testing.assert_close(f4[:, -48:], enc.vit.norm(layers[-1])[:, 0])  # the last block's normed [CLS]


def test_core_protocols_read_the_teacher(tiny, tmp_path) -> None:
    """k-NN / linear probe features and the fine-tuning classifier come from the teacher
    (``eval_encoder``), as the official scripts load ``teacher`` weights; ``n_last_blocks=2``
    equals the model's own ``last2`` features (the DINO/iBOT concatenation)."""
    from mimkit import evaluate as ev
    from mimkit.export import export

    torch.manual_seed(0)
    m = tiny.eval()
    with torch.no_grad():
        for p in m.teacher.copies["encoder"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    export(m, tmp_path / "ibot.safetensors", "full")
    model = ev.load_source(tmp_path / "ibot.safetensors")
    teacher, student = model.teacher.copies["encoder"], model.encoder
    images = [{"image": torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(i)), "label": i % 3}
              for i in range(6)]
    x = torch.stack([d["image"] for d in images])
    feats, labels = ev.extract_features(model, images, "cls", batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(feats, teacher.forward_features(x)[:, 0], rtol=0, atol=1e-6)
        assert (feats - student.forward_features(x)[:, 0]).abs().max() > 1e-3
        f2, _ = ev.extract_features(model, images, "cls", batch_size=4, n_last_blocks=2)
        assert f2.shape == (6, 96)
        torch.testing.assert_close(f2, model.features(x, pool="last2"), rtol=0, atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    clf = ev.classifier_from_encoder(model, 3)
    assert torch.equal(clf.blocks[1].attn.qkv.weight, teacher.vit.blocks[1].attn.qkv.weight)
    assert not torch.equal(clf.blocks[1].attn.qkv.weight, student.vit.blocks[1].attn.qkv.weight)
