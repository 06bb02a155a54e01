"""MILAN: the semantic-aware masker's keep statistics, the prompting decoder against the official
formulation (frozen prompts at every layer), the loss, and both teacher loading paths (a FLIP run;
a Hugging Face CLIP checkpoint saved locally from a random model)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.components import BuildEnv
from mimkit.plugins import registry
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit.types import Context
from mimkit_milan import PromptingDecoder, milan_loss

pytestmark = pytest.mark.filterwarnings("ignore:model.teacher.source is null")
N = 64


def milan(**model):
    torch.manual_seed(0)
    base = {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "decoder": {"embed_dim": 32, "depth": 2, "num_heads": 2}}
    return mimkit.build({"method": "milan_tiny_fashion_mnist", "model": mimkit.config.deep_merge(base, model)})


def test_multinomial_keep_statistics():
    m = milan()
    attn = torch.softmax(torch.linspace(-3, 3, N), 0)  # strictly increasing importance
    b = 4000
    a = attn.expand(b, -1)
    g = torch.Generator().manual_seed(0)
    mask = m.masker({}, m.masker.draw(b, g, torch.device("cpu")), Context(teacher={"teacher_cls_attn": a}))
    kept = ~mask.hidden
    assert (kept.sum(1) == 16).all() and mask.num_keep == 16  # exactly int(64 * 0.25) kept, every image
    freq = kept.float().mean(0)
    assert freq[-8:].mean() > 4 * freq[:8].mean()  # high attention: kept far more often
    # the same distribution as the official torch.multinomial(importance, N, replacement=False)[:, :16]
    torch.manual_seed(1)
    official = torch.zeros(b, N).scatter_(1, torch.multinomial(a, N, replacement=False)[:, :16], 1.0).mean(0)
    # two independent estimates of the same frequencies: within 5 standard errors at every position
    se = (2 * official.clamp(0.01, 0.99) * (1 - official.clamp(0.01, 0.99)) / b).sqrt()
    assert ((freq - official).abs() <= 5 * se).all(), (freq - official).abs().max()
    # keeping a single patch is one multinomial draw: its frequencies follow the attention itself
    one = m.masker.__class__(m.masker.config.__class__(keep="high", sampling="multinomial", ratio=63 / 64,
                                                       masking_prob=1.0), BuildEnv(registry=None, encoder=m.encoder))
    mask1 = one({}, one.draw(b, g, torch.device("cpu")), Context(teacher={"teacher_cls_attn": a}))
    assert ((~mask1.hidden).sum(1) == 1).all()
    assert torch.allclose((~mask1.hidden).float().mean(0), attn, atol=0.02)


def _official_decoder(dec: PromptingDecoder, latent, ids_restore, ids_keep, ids_dump):
    """``models_milan.py: forward_decoder`` re-written line by line with the same weights."""
    x = dec.embed(latent)
    mask_tokens = dec.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + dec.pos_embed
    fix = torch.cat([x[:, :1, :], torch.gather(x[:, 1:, :], 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[-1]))], 1)
    x = torch.gather(x[:, 1:, :], 1, ids_dump.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
    for blk in dec.blocks:
        y = blk.norm1(x)
        full = torch.cat([fix[:, 1:, :], y], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[-1]))
        full = torch.cat([fix[:, :1, :], full], dim=1)
        b, n, c = full.shape
        h = blk.attn.num_heads
        q = blk.attn.q(y).reshape(b, y.shape[1], h, c // h).permute(0, 2, 1, 3)
        kv = blk.attn.kv(full).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        att = ((q @ kv[0].transpose(-2, -1)) * (c // h) ** -0.5).softmax(-1)
        x = x + blk.attn.proj((att @ kv[1]).transpose(1, 2).reshape(b, y.shape[1], c))
        x = x + blk.mlp(blk.norm2(x))
    x_ = torch.cat([fix[:, 1:, :], x], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
    return dec.pred(dec.norm(torch.cat([fix[:, :1, :], x_], dim=1)))


def test_prompting_decoder_keeps_prompts_frozen_and_matches_the_official_formulation():
    m = milan()
    dec = m.decoder
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        ctx = Context(teacher=m.teacher({"image": x}))
        mask = m.masker({}, m.masker.draw(3, torch.Generator().manual_seed(2), torch.device("cpu")), ctx)
        latent = m.encoder.encode(m.encoder.embed(x, mask), mask)  # (3, 1 + 16, 32)
        out, streams = dec(latent, mask, return_streams=True)
    assert out.shape == (3, 1 + N, m.teacher.dim) and len(streams) == 2
    p0, q0 = streams[0]
    for p, q in streams[1:]:
        assert torch.equal(p, p0)  # prompts enter every layer unchanged
        assert not torch.allclose(q, q0)  # while the mask-token stream is updated
    # the outputs at visible positions ([CLS] too) are the prompts themselves, only normed and projected
    vis = torch.gather(out[:, 1:], 1, mask.ids_keep.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
    assert torch.allclose(vis, dec.pred(dec.norm(p0[:, 1:])), atol=1e-5)
    assert torch.allclose(out[:, 0], dec.pred(dec.norm(p0[:, 0])), atol=1e-5)
    ref = _official_decoder(dec, latent, mask.ids_restore, mask.ids_keep, mask.ids_hidden)
    assert torch.allclose(out, ref, atol=1e-5)


def test_loss_is_mean_2_minus_2cos_over_all_tokens():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    want = (2 - 2 * F.cosine_similarity(p, t, dim=-1)).mean()
    assert milan_loss(p, t).item() == pytest.approx(want.item(), rel=1e-6)
    assert milan_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    m = milan()
    out = m({"image": torch.randn(2, 1, 32, 32)}, Context())
    assert out.pred.shape == out.target.shape == (2, 1 + N, m.teacher.dim)  # [CLS] + every patch
    assert torch.allclose(out.target.norm(dim=-1), torch.ones(2, 1 + N), atol=1e-5)
    assert out.loss.item() == pytest.approx(milan_loss(out.pred, out.target).item(), rel=1e-6)


def test_hf_clip_checkpoint_teacher_from_a_local_random_model(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 99},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 4},
                     projection_dim=24)
    clip = CLIPModel(cfg).eval()
    clip.save_pretrained(tmp_path / "clip")  # what a user has: a checkpoint folder (never a download)
    m = milan(teacher={"name": "hf_clip", "source": str(tmp_path / "clip" / "model.safetensors")})
    assert m.teacher.dim == 24 and m.decoder.pred.out_features == 24
    x = torch.randn(2, 1, 32, 32)
    out = m.teacher({"image": x})
    rgb = x.expand(-1, 3, -1, -1)
    with torch.no_grad():
        image_features = clip.get_image_features(pixel_values=rgb)
        image_features = getattr(image_features, "pooler_output", image_features)
    assert torch.allclose(out["teacher_tokens"][:, 0], image_features, atol=1e-5)  # [CLS] = CLIP's image embedding
    assert out["teacher_tokens"].shape == (2, 1 + N, 24)
    assert torch.allclose(out["teacher_cls_attn"].sum(-1), torch.ones(2), atol=1e-5)
    assert all(not p.requires_grad for p in m.teacher.parameters())
    with pytest.raises(mimkit.errors.ConfigError, match="holds no Hugging Face CLIP checkpoint"):
        milan(teacher={"name": "hf_clip", "source": str(tmp_path)})


def test_flip_run_teacher_distils_and_stays_frozen(tmp_path):
    small = {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "text": {"width": 32, "depth": 1, "num_heads": 2},
             "embed_dim": 16}
    flip = check_preset_trains("flip_tiny_fashion_mnist", tmp_path / "flip",
                               tiny_overrides("flip_tiny_fashion_mnist", limit=64) | {"model": small}, steps=2,
                               expect_fall=False, check_resume=False)
    over = tiny_overrides("milan_tiny_fashion_mnist", limit=64) | {"model": {
        "encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "teacher": {"source": str(flip)}}}
    run = check_preset_trains("milan_tiny_fashion_mnist", tmp_path / "milan", over, steps=4, expect_fall=False)
    a, b = mimkit.load(flip), mimkit.load(run)
    assert b.teacher.dim == 16 and b.decoder.pred.out_features == 16
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(b.teacher.encoder.state_dict()[k], v), k  # the teacher is the FLIP tower, untouched
    assert torch.equal(b.teacher.proj.weight, a.img_proj.weight)
    x = torch.randn(2, 1, 32, 32)
    t = b.teacher({"image": x})["teacher_tokens"]
    assert torch.allclose(t, a.img_proj(a.encoder.forward_features(x)), atol=1e-5)


def test_prompting_decoder_is_registered_and_preset_components_validate():
    assert registry().get("decoders", "prompting") is PromptingDecoder
    with pytest.raises(mimkit.errors.ConfigError, match="model.decoder.bogus"):
        milan(decoder={"bogus": 1})
