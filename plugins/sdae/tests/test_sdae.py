"""SdAE: the multi-fold split, the teacher's per-token standardization, the cosine loss, the
per-epoch cosine EMA, and the tiny preset training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.plugin_api import Context
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit_sdae import fold_mask, multi_fold_ids, sdae_cosine_loss, standardize_tokens

TINY = "sdae_tiny_fashion_mnist"


def _model(**model):
    torch.manual_seed(0)
    return mimkit.build({"method": TINY, "model": model})


def test_multi_fold_split_puts_every_hidden_token_in_exactly_one_group():
    g = torch.Generator().manual_seed(0)
    ids_hidden = torch.stack([torch.randperm(196, generator=g)[:147] for _ in range(4)])  # (B, 147)
    folds = multi_fold_ids(ids_hidden, 3)
    assert folds.shape == (12, 49)
    for b in range(4):
        groups = folds[b * 3:(b + 1) * 3]
        assert sorted(groups.flatten().tolist()) == sorted(ids_hidden[b].tolist())  # each exactly once
        for k in range(3):  # group k is the k-th slice of the masker's order (official reshape)
            assert groups[k].tolist() == ids_hidden[b, k * 49:(k + 1) * 49].tolist()
    # a remainder that does not divide is dropped, as the official shrink_num handling
    assert multi_fold_ids(ids_hidden, 3, shrink_num=100).shape == (12, 33)
    # the fold mask keeps exactly the fold, in its order
    m = fold_mask(folds, 196)
    assert torch.equal(m.ids_keep, folds) and m.hidden.sum(1).eq(196 - 49).all()
    assert torch.equal(m.ids_shuffle.gather(1, m.ids_restore), torch.arange(196).expand(12, -1))


def test_teacher_sees_each_fold_as_its_own_sequence_at_original_positions():
    model = _model()
    x = torch.randn(2, 1, 32, 32)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    out = model({"image": x}, Context(), noise=noise)
    ids = out.extra["fold_ids"]  # (2*3, 16)
    assert ids.shape == (6, 16)
    hidden = out.mask.hidden
    for r in range(6):
        assert hidden[r // 3, ids[r]].all()  # only hidden tokens go to the teacher
    vit = model.teacher.encoder.vit
    patches = vit.patch_embed(x) + vit.pos_embed[:, 1:]  # (2, 64, D): original positions
    for r in range(6):
        seq = torch.cat([vit.cls_token + vit.pos_embed[:, :1], patches[r // 3, ids[r]][None]], 1)
        for blk in vit.blocks:
            seq = blk(seq)
        t = vit.norm(seq)[0, 1:]
        want = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        assert torch.allclose(out.target[r], want, atol=1e-4)
    # the loss: 1 - cos per hidden token (the paper), predictions taken at the fold ids
    pred = model.decoder(out.latent, out.mask)
    want_pred = torch.stack([pred[r // 3, ids[r]] for r in range(6)])
    assert torch.allclose(out.pred, want_pred, atol=1e-6)
    cos = torch.stack([F.cosine_similarity(out.target[r, i], want_pred[r, i], dim=0) for r in range(6) for i in range(16)])
    assert out.loss.item() == pytest.approx(1 - cos.mean().item(), abs=1e-5)


def test_per_token_standardization_and_cosine_forms():
    t = torch.randn(5, 7, 32) * 3 + 1
    s = standardize_tokens(t)
    want = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=True, keepdim=True) + 1e-6)
    assert torch.allclose(s, want, atol=1e-6)
    assert torch.allclose(s.mean(-1), torch.zeros(5, 7), atol=1e-5)
    assert torch.allclose(s.std(-1), torch.ones(5, 7), atol=1e-4)
    p = torch.randn(5, 7, 32)
    assert sdae_cosine_loss(p, s).item() == pytest.approx(1 - F.cosine_similarity(p, s, dim=-1).mean().item(), abs=1e-6)
    # the official call F.cosine_similarity(teacher, student) with its default dim=1
    assert sdae_cosine_loss(p, s, "tokens").item() == pytest.approx(1 - F.cosine_similarity(s, p).mean().item(), abs=1e-6)


def _cosine_scheduler(base, final, epochs):  # util/cosine_scheduler.py with niter_per_ep=1, no warmup
    iters = np.arange(epochs)
    return final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))


def test_ema_is_applied_once_per_epoch_with_the_official_cosine_momentum():
    model = _model()
    model.set_schedule(15 * 100, 100)  # 15 epochs of 100 steps
    official = _cosine_scheduler(0.96, 0.99, 15)
    for e in range(15):
        assert model.teacher.momentum_at(e) == pytest.approx(official[e], abs=1e-12)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.on_step_end(37)  # per-step hook: no change
    assert all(torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
    model.on_epoch_end(4)  # end of epoch index 3: momentum_schedule[3]
    m = official[3]
    w_s = model.encoder.vit.blocks[0].attn.qkv.weight
    key = "copies.encoder.vit.blocks.0.attn.qkv.weight"
    assert torch.allclose(model.teacher.state_dict()[key], m * before[key] + (1 - m) * w_s, atol=1e-6)


def test_tiny_preset_trains_with_a_falling_loss(tmp_path):
    small = {"model": {"encoder": {"depth": 2}, "decoder": {"depth": 1}}}
    check_preset_trains(TINY, tmp_path, tiny_overrides(TINY, limit=96, batch_size=16) | small, steps=6,
                        check_resume=False, expect_fall=["loss/cos"])


# -- an explicit mask: forward(batch, mask=hidden) ----------------------------------------------

SMALL = {"encoder": {"embed_dim": 48, "depth": 1, "num_heads": 3}, "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}


def _small():
    return _model(**SMALL).eval()


def _official_fold_ids(hidden: torch.Tensor, noise: torch.Tensor, folds: int = 3) -> torch.Tensor:
    """The official rule on a given hidden set: ``ids_unkeep`` lists the hidden ids by ascending
    noise (``argsort(noise)`` after the kept ones); fold g is its g-th slice of n."""
    rows = []
    for b in range(hidden.shape[0]):
        ids = [int(i) for i in torch.argsort(noise[b]) if hidden[b, i]]
        n = len(ids) // folds
        rows += [ids[g * n:(g + 1) * n] for g in range(folds)]
    return torch.tensor(rows)


def test_explicit_mask_with_the_noise_map_is_the_noise_path():
    model = _small()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model({"image": x}, noise=noise)
        b = model({"image": x}, noise=noise, mask=a.mask.hidden)
    assert torch.equal(b.mask.hidden, a.mask.hidden) and torch.equal(b.extra["fold_ids"], a.extra["fold_ids"])
    assert (b.pred - a.pred).abs().max() <= 1e-6 and abs(float(b.loss) - float(a.loss)) <= 1e-6
    assert torch.equal(a.extra["fold_ids"], _official_fold_ids(a.mask.hidden, noise))


def test_explicit_mask_decides_what_is_hidden_and_noise_the_folds():
    model = _small()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(5))
    hidden = torch.zeros(2, 64, dtype=torch.bool)
    hidden[0, :48], hidden[1, 16:] = True, True  # not the map the noise gives
    with torch.no_grad():
        out = model({"image": x}, noise=noise, mask=hidden)
    assert torch.equal(out.mask.hidden, hidden)
    assert torch.equal(out.mask.ids_hidden.sort(1).values, hidden.nonzero()[:, 1].reshape(2, 48))
    ids = out.extra["fold_ids"]  # (2*3, 16): the hidden ids by ascending noise, in 3 slices
    assert torch.equal(ids, _official_fold_ids(hidden, noise))
    # the student saw exactly the visible tokens: the loss is the one of a direct hand-run
    lat = model.encoder.encode(model.encoder.embed(x, out.mask), out.mask)
    torch.testing.assert_close(out.latent, lat, rtol=0, atol=0)
    # another map gives another loss
    with torch.no_grad():
        other = model({"image": x}, noise=noise, mask=hidden.flip(1))
    assert abs(float(other.loss) - float(out.loss)) > 1e-4


def test_explicit_mask_alone_draws_the_fold_order_from_the_seeded_generator():
    model = _small()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    hidden = torch.zeros(2, 64, dtype=torch.bool)
    hidden[0] = torch.arange(64) % 4 != 3  # a scattered map
    hidden[1, 10:58] = True
    assert hidden.sum(1).tolist() == [48, 48]

    def run(seed):
        with torch.no_grad():
            return model({"image": x}, Context(generator=torch.Generator().manual_seed(seed)), mask=hidden)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.extra["fold_ids"], b.extra["fold_ids"]) and float(a.loss) == float(b.loss)
    assert not torch.equal(a.extra["fold_ids"], c.extra["fold_ids"])  # another seed, other folds
    # the generator's draw is the masker's noise: the same folds as passing that noise
    noise = model.masker.draw(2, torch.Generator().manual_seed(7), torch.device("cpu"))
    assert torch.equal(a.extra["fold_ids"], _official_fold_ids(hidden, noise))
    for r in range(6):  # every fold holds hidden tokens of its sample only, each token once
        assert hidden[r // 3, a.extra["fold_ids"][r]].all()
    for s in range(2):
        got = a.extra["fold_ids"][3 * s:3 * s + 3].flatten().sort().values
        assert torch.equal(got, hidden[s].nonzero()[:, 0])
    # a uniformly random partition, as the official slices of a random order: over many draws a
    # hidden token lands in each fold about a third of the time
    gen = torch.Generator().manual_seed(9)
    counts = torch.zeros(3)
    from mimkit_sdae import order_like
    for _ in range(600):
        order = model.masker({}, model.masker.draw(2, gen, torch.device("cpu")))
        ids = multi_fold_ids(order_like(hidden, order).ids_hidden, 3)
        counts += torch.stack([(ids[g] == 0).any() for g in range(3)]).float()  # token 0 of sample 0
    assert ((counts / 600) - 1 / 3).abs().max() < 0.06, counts


def test_explicit_mask_is_checked():
    model = _small()
    x = torch.randn(2, 1, 32, 32)
    uneven = torch.zeros(2, 64, dtype=torch.bool)
    uneven[0, :48], uneven[1, :40] = True, True
    with pytest.raises(ValueError, match="same number of hidden tokens"):
        model({"image": x}, mask=uneven)
    with pytest.raises(ValueError, match=r"boolean \(B, N\)"):
        model({"image": x}, mask=uneven[:, :10])
