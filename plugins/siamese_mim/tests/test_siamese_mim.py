"""Siamese MIM: MSE on pixels is MAE, the feature target is the encoder on the complementary
view, the token InfoNCE against a direct computation, the tiny preset trains; the occlusion
analysis gives 1 at ratio 0 and falls with the ratio."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.plugin_api import Context
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit_siamese_mim import OcclusionInvariance, encode_visible, token_infonce

TINY = "siamese_mim_tiny_fashion_mnist"
SMALL = {"encoder": {"depth": 2}, "decoder": {"depth": 1}}


def _model(**model):
    torch.manual_seed(0)
    return mimkit.build({"method": TINY, "model": {**SMALL, **model}})


def test_mse_on_pixels_is_mae_exactly():
    siamese = _model(similarity="mse")
    torch.manual_seed(0)
    mae = mimkit.build({"method": "mae_tiny_fashion_mnist", "model": SMALL})
    missing, unexpected = siamese.load_state_dict(mae.state_dict(), strict=False)
    assert not missing, missing
    x = torch.randn(3, 1, 32, 32)
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
    a = siamese({"image": x}, Context(), noise=noise)
    b = mae({"image": x}, Context(), noise=noise)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_feature_target_is_the_encoder_on_the_complementary_view():
    model = _model(target_branch="stopgrad", similarity="cosine")
    x = torch.randn(2, 1, 32, 32)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(3))
    out = model({"image": x}, Context(), noise=noise)
    ids = out.extra["target_ids"]  # (B, 48): the hidden tokens, ascending
    assert torch.equal(ids, torch.stack([h.nonzero().squeeze(1) for h in out.mask.hidden]))
    with torch.no_grad():
        want = encode_visible(model.encoder, x, ids)[:, 1:]  # the encoder sees only x * (1 - M)
    assert torch.allclose(out.target, want, atol=1e-5)
    assert not out.target.requires_grad
    pred = model.decoder(out.latent, out.mask)
    cos = F.cosine_similarity(torch.stack([pred[b, ids[b]] for b in range(2)]), want, dim=-1)
    assert out.loss.item() == pytest.approx((1 - cos).mean().item(), abs=1e-5)


def test_token_infonce_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    terms = []
    for b in range(2):
        for i in range(5):
            s = torch.stack([F.cosine_similarity(p[b, i], t[b, j], dim=0) for j in range(5)]) / 0.1
            terms.append(-torch.log_softmax(s, 0)[i])
    assert token_infonce(p, t, 0.1, "image").item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    pf, tf = p.reshape(10, 8), t.reshape(10, 8)
    terms = [-torch.log_softmax(F.cosine_similarity(pf[i][None], tf, dim=-1) / 0.1, 0)[i] for i in range(10)]
    assert token_infonce(p, t, 0.1, "batch").item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_ema_target_branch_uses_the_core_teacher():
    model = _model(target_branch="ema", similarity="cosine")
    assert model.teacher.paths == ["encoder"]
    with pytest.raises(mimkit.plugin_api.ConfigError, match="model.teacher"):
        _model(teacher={"name": "ema"})


def test_tiny_preset_trains_with_a_falling_loss(tmp_path):
    over = tiny_overrides(TINY, limit=96, batch_size=16) | {"model": SMALL, "optim": {"warmup_epochs": 0.0}}
    # no warm-up: the lr acts at once
    check_preset_trains(TINY, tmp_path, over, steps=8, check_resume=False, expect_fall=["loss/infonce"])


def test_occlusion_analysis_is_one_at_ratio_zero_and_falls_with_the_ratio(tmp_path):
    cfg = OcclusionInvariance.Config(ratios=[0.0, 0.25, 0.5, 0.9], num_images=32, plot=str(tmp_path / "occ.png"))
    rec = OcclusionInvariance(cfg)(["random:mae_tiny_fashion_mnist"])
    run = rec["runs"][0]
    cos = [run["masked"][str(r)]["cos"] for r in cfg.ratios]
    assert cos[0] == pytest.approx(1.0, abs=1e-5)
    assert cos[0] > cos[1] > cos[2] > cos[3]
    assert run["transforms"]["flip"]["cos"] < 1.0 and run["other_images"] < 1.0
    assert (tmp_path / "occ.png").stat().st_size > 1000 and "mask 0.90" in rec["summary"]
    # through the CLI, flags from the Config, the record written to --out
    out = subprocess.run([sys.executable, "-m", "mimkit.cli", "analyze", "occlusion", "random:mae_tiny_fashion_mnist",
                          "--num-images", "16", "--ratios", "[0.0, 0.5]", "--transforms", "[flip]",
                          "--out", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "mask 0.50" in out.stdout
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["runs"][0]["masked"]["0.0"]["cos"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="ratios"):
        OcclusionInvariance.Config(ratios=[1.5])
