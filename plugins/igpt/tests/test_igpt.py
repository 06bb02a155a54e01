"""iGPT: the palette, the causal mask, BERT masking, the losses against direct computations,
KV-cached sampling against uncached sampling, the tiny preset training, loading, pictures and
the layer-sweep protocol."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.plugin_api import ConfigError
from mimkit.testing import check_component, check_preset_trains, read_metrics, tiny_overrides
from mimkit_igpt import IGPT, Palette
from mimkit_igpt.visualize import Completions

PRESET = "igpt_tiny_fashion_mnist"
SMALL = {"n_px": 8, "channels": 1, "palette": {"size": 8}, "n_layer": 2, "n_embd": 32, "n_head": 2}


def small(objective: str = "ar", seed: int = 0, **kw) -> IGPT:
    torch.manual_seed(seed)
    model = mimkit.build({"model": {"name": "igpt", **SMALL, "objective": objective, **kw}})
    model.palette.fit(torch.linspace(-1, 1, 64).view(64, 1))  # evenly spread grays
    torch.nn.init.normal_(model.encoder.wtet, std=0.5)  # the zero init would make every logit 0
    return model.eval()


def tokens(model: IGPT, b: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.palette.size, (b, model.encoder.seq_len), generator=g)


def all_logits(model: IGPT, x: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
    enc = model.encoder
    return enc.logits(enc.hidden_states(enc.embed(x, hidden))[-1])


# -- palette ------------------------------------------------------------------------------------


def test_palette_round_trip_and_nearest_centre_assignment():
    pal = Palette(16, 1, seed=0)
    torch.manual_seed(0)
    imgs = torch.randn(8, 1, 6, 6)
    centers = pal.fit(imgs).clone()
    assert bool(pal.fitted) and torch.all(centers[1:, 0] > centers[:-1, 0])  # sorted dark -> light, distinct
    t = pal(imgs)  # (8, 36)
    # each pixel goes to the centre at the smallest squared distance (brute force)
    d = (imgs.permute(0, 2, 3, 1).reshape(8, 36, 1, 1) - centers.view(1, 1, 16, 1)).pow(2).sum(-1)
    assert torch.equal(t, d.argmin(-1))
    back = pal.dequantize(t)  # (8, 1, 6, 6)
    assert torch.equal(back.flatten(), centers[t.flatten(), 0])
    assert torch.equal(pal(back), t)  # tokens -> pixels -> tokens is the identity
    # RGB: 3-D centres
    rgb = Palette(8, 3, seed=0)
    x = torch.rand(4, 3, 5, 5)
    rgb.fit(x)
    tt = rgb(x)
    assert torch.equal(rgb(rgb.dequantize(tt, (5, 5))), tt)


def test_palette_fit_is_deterministic_and_saved_with_the_model(tmp_path):
    torch.manual_seed(3)
    px = torch.randn(5000, 1)
    a, b = Palette(16, 1, seed=0), Palette(16, 1, seed=0)
    assert torch.equal(a.fit(px), b.fit(px.clone()))
    assert not torch.equal(Palette(16, 1, seed=0).fit(px), Palette(16, 1, seed=0).fit(px * 2))
    # the model fits it on the first batch it sees, once; the buffer then travels in the state dict
    m1, m2 = small(), small()
    for m in (m1, m2):
        m.palette.fitted.fill_(False)
        m.encoder._palette_checked = False
    x = torch.randn(4, 1, 8, 8)
    m1(dict(image=x))
    m2(dict(image=x))
    assert torch.equal(m1.palette.centers, m2.palette.centers) and bool(m1.palette.fitted)
    before = m1.palette.centers.clone()
    m1(dict(image=x * 3))  # a later batch does not refit
    assert torch.equal(m1.palette.centers, before)
    m3 = mimkit.build({"model": {"name": "igpt", **SMALL}})
    m3.load_state_dict(m1.state_dict())
    m3(dict(image=x * 5))
    assert torch.equal(m3.palette.centers, before)


# -- the transformer ----------------------------------------------------------------------------


def test_causal_mask_hides_the_future():
    model = small("ar")
    x = tokens(model, 2)
    base = all_logits(model, x)  # (B, L, K): position i predicts token i from tokens < i
    for t in (0, 17, 40, model.encoder.seq_len - 1):
        y = x.clone()
        y[:, t] = (y[:, t] + 3) % model.palette.size
        changed = all_logits(model, y)
        assert torch.equal(changed[:, : t + 1], base[:, : t + 1]) or torch.allclose(
            changed[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
        if t + 1 < model.encoder.seq_len:  # ... and the next position does see it
            assert (changed[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4


def test_bert_masks_15_percent_and_zeroes_masked_embeddings():
    model = small("bert")
    masker = model.masker
    g = torch.Generator().manual_seed(0)
    noise = torch.stack([masker.sample_noise(g) for _ in range(400)])  # (400, 64)
    hidden = masker(noise)
    rate = hidden.float().mean().item()
    n = hidden.numel()
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    assert hidden.sum(1).float().std() > 0  # independent per position: counts vary across images
    x = tokens(model, 4)
    hid = hidden[:4]
    enc = model.encoder
    h = enc.embed(x, hid)
    pos = enc.wpe[: x.shape[1]].expand_as(h)
    assert torch.equal(h[hid], pos[hid])  # masked: position embedding only
    assert torch.equal(h[~hid], (enc.wte[x] + pos)[~hid])
    # so the logits cannot depend on what the masked tokens were
    y = torch.where(hid, (x + 5) % model.palette.size, x)
    torch.testing.assert_close(all_logits(model, y, hid), all_logits(model, x, hid), atol=0, rtol=0)
    # no causal mask: an early position sees a later visible token
    t = int(torch.nonzero(~hid[0])[-1])
    z = x.clone()
    z[0, t] = (z[0, t] + 1) % model.palette.size
    assert (all_logits(model, z, hid)[0, 0] - all_logits(model, x, hid)[0, 0]).abs().max() > 1e-5


def test_ar_loss_and_bits_per_dim_against_a_direct_computation():
    model = small("ar")
    img = torch.randn(3, 1, 8, 8)
    out = model(dict(image=img))
    t = model.palette(img)  # (3, 64)
    enc = model.encoder
    # direct: position i reads [sos, x_0 .. x_{i-1}] and is scored on x_i
    h = torch.cat([enc.sos.expand(3, 1, -1), enc.wte[t[:, :-1]]], 1) + enc.wpe
    for blk in enc.blocks:
        h = blk(h, causal=True)
    logp = torch.log_softmax(enc.ln_f(h) @ enc.wtet.t(), -1)
    nll = -logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (3, 64)
    torch.testing.assert_close(out.losses["ar"], nll.mean())
    torch.testing.assert_close(out.loss, nll.mean())
    torch.testing.assert_close(out.losses["bits_per_dim"], nll.mean() / math.log(2))
    # the zero-initialized output embedding: a fresh model predicts the uniform distribution
    fresh = mimkit.build({"model": {"name": "igpt", **SMALL}})
    assert fresh(dict(image=img)).loss.item() == pytest.approx(math.log(8), abs=1e-6)


def test_bert_loss_is_a_per_image_mean_over_masked_positions():
    model = small("bert")
    img = torch.randn(3, 1, 8, 8)
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(1))
    out = model(dict(image=img, mask_noise=noise))
    hid = noise < 0.15
    t = model.palette(img)
    ce = F.cross_entropy(all_logits(model, t, hid).transpose(1, 2), t, reduction="none")  # (3, 64)
    per_image = torch.stack([ce[i][hid[i]].mean() for i in range(3)])
    torch.testing.assert_close(out.losses["bert"], per_image.mean())
    assert torch.equal(out.extra["hidden"], hid)


def test_classification_head_adds_the_fine_tuning_loss():
    model = small("ar", clf_weight=0.5, num_classes=4)
    torch.nn.init.normal_(model.clf.weight, std=0.1)
    img, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 3, 1])
    out = model(dict(image=img, label=y))
    enc = model.encoder
    h = enc.hidden_states(enc.embed(model.palette(img)))[-1]
    clf = F.cross_entropy(model.clf(enc.ln_f(h).mean(1)), y)
    torch.testing.assert_close(out.losses["clf"], clf)
    torch.testing.assert_close(out.loss, out.losses["ar"] + 0.5 * clf)


# -- sampling -----------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Token-by-token sampling is hundreds of tiny ops: threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("prompt_len,top_k,temp", [(0, None, 1.0), (18, 4, 0.8), (35, None, 1.3)])
def test_kv_cached_sampling_equals_uncached(prompt_len, top_k, temp, one_thread):
    model = small("ar", n_px=6).double()
    prompt = tokens(model, 3)[:, :prompt_len]
    kw = dict(temperature=temp, top_k=top_k)
    a = model.encoder.sample(prompt, generator=torch.Generator().manual_seed(7), use_cache=True, **kw)
    b = model.encoder.sample(prompt, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :prompt_len], prompt)
    c = model.encoder.sample(prompt, generator=torch.Generator().manual_seed(8), **kw)
    assert not torch.equal(a, c)  # the seed matters
    if top_k is not None:  # every drawn token is among the top-k of its position's logits
        logits = all_logits(model, a)[:, prompt_len:]
        rank = (logits > logits.gather(-1, a[:, prompt_len:].unsqueeze(-1))).sum(-1)
        assert int(rank.max()) < top_k


# -- the preset, loading, pictures, protocols ---------------------------------------------------


def test_model_config_contract():
    check_component(PRESET, "model", {"model": {"n_layer": 2, "n_embd": 32}})


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="model.n_embd"):
        mimkit.build({"model": {"name": "igpt", **SMALL, "n_embd": 30, "n_head": 4}})
    with pytest.raises(ConfigError, match="model.objective"):
        mimkit.build({"model": {"name": "igpt", **SMALL, "objective": "mlm"}})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("igpt")
    over = tiny_overrides(PRESET) | {"model": {"n_layer": 2, "n_embd": 32, "n_head": 2}}
    return check_preset_trains(PRESET, tmp, over, steps=4)


def test_tiny_preset_trains_resumes_and_loads_its_palette(tiny_run):
    rows = read_metrics(tiny_run)
    assert rows[0]["loss/ar"] == pytest.approx(math.log(16), abs=1e-5)  # zero-init head: uniform at step 1
    assert rows[-1]["loss/bits_per_dim"] == pytest.approx(rows[-1]["loss/ar"] / math.log(2), rel=1e-6)
    model = mimkit.load(tiny_run)
    assert bool(model.palette.fitted) and model.palette.centers.shape == (16, 1)
    assert torch.all(model.palette.centers[1:] > model.palette.centers[:-1])
    # the palette is the k-means fit on the first training batch, restored (not refit) by load
    from mimkit.api import build_dataset
    from mimkit.data import epoch_batches

    ds = build_dataset(model.recipe)
    fresh = Palette(16, 1, seed=0)  # fit again on the first batch of epoch 0 under the run's seed
    idx = epoch_batches(len(ds), model.recipe.seed, 0, model.recipe.train.batch_size, 0, 1)[0]
    fresh.fit(torch.stack([ds[i]["image"] for i in idx]))
    torch.testing.assert_close(model.palette.centers, fresh.centers)


def test_completions_picture_and_core_knn(tiny_run, tmp_path):
    model = mimkit.load(tiny_run)
    from mimkit.api import build_dataset

    ds = build_dataset(model.recipe, train=False, eval_split=True)
    batch = {"image": torch.stack([ds[i]["image"] for i in range(2)])}
    path = Completions(Completions.Config(num_images=2, samples=2, top_k=8))(model, batch, tmp_path / "c.png")
    assert path.is_file() and path.stat().st_size > 5000
    from mimkit.evaluate import knn

    rec = knn(tiny_run, limit_train=64, limit_test=32, pool="mean")
    assert rec["num_test"] == 32 and 0.1 < rec["top1"] <= 1.0  # well above chance needs more training


def test_layer_sweep_protocol(tiny_run, tmp_path):
    from mimkit.cli import main

    out = tmp_path / "sweep.json"
    rc = main(["eval", "igpt_layers", str(tiny_run), "--limit-train", "96", "--limit-test", "32", "--epochs", "2",
               "--batch-size", "32", "--plot", str(tmp_path / "sweep.png"), "--out", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["layers"] == [0, 1, 2]
    for init in ("pretrained", "random"):
        accs = [rec[init]["by_layer"][str(k)]["top1"] for k in rec["layers"]]
        assert all(0.0 <= a <= 1.0 for a in accs)
        assert rec[init]["best_top1"] == max(accs)
    assert (tmp_path / "sweep.png").stat().st_size > 5000
