"""Official MCG-NJU/VideoMAE pretraining checkpoints load and give the official outputs.

The reference is written here from the formulas of ``modeling_pretrain.py`` (encoder on the
visible cubes, ``encoder_to_decoder``, visible tokens + mask tokens with their sinusoid
positions, decoder on the last N_mask tokens, LayerNorm eps 1e-6) and of
``engine_for_pretraining.py`` (target: per cube and channel, unbiased std + 1e-6; MSE), reading
random weights saved in the official layout. Tolerances: pred 5e-6, loss 1e-6 (fp32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit_videomae import convert_official

D, DEPTH, HEADS = 128, 2, 2  # importer: heads = dim // 64 off the official sizes
DD, DDEPTH, DHEADS = 64, 2, 1
C, T, S, PT, P = 3, 4, 32, 2, 8
N = (T // PT) * (S // P) ** 2  # 2 x 4 x 4 = 32 cubes
OUT = PT * P * P * C
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def official_table(n: int, d: int) -> torch.Tensor:
    """get_sinusoid_encoding_table, written out with numpy as the official code."""
    def angle(pos):
        return [pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)]
    t = np.array([angle(p) for p in range(n)])
    t[:, 0::2] = np.sin(t[:, 0::2])
    t[:, 1::2] = np.cos(t[:, 1::2])
    return torch.tensor(t, dtype=torch.float32).unsqueeze(0)


def official_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {"encoder.patch_embed.proj.weight": r(D, C, PT, P, P), "encoder.patch_embed.proj.bias": r(D),
          "encoder.norm.weight": 1 + r(D), "encoder.norm.bias": r(D),
          "encoder_to_decoder.weight": r(DD, D), "mask_token": r(1, 1, DD),
          "decoder.norm.weight": 1 + r(DD), "decoder.norm.bias": r(DD),
          "decoder.head.weight": r(OUT, DD), "decoder.head.bias": r(OUT)}

    def block(pre, d):
        sd.update({f"{pre}norm1.weight": 1 + r(d), f"{pre}norm1.bias": r(d),
                   f"{pre}attn.qkv.weight": r(3 * d, d), f"{pre}attn.q_bias": r(d), f"{pre}attn.v_bias": r(d),
                   f"{pre}attn.proj.weight": r(d, d), f"{pre}attn.proj.bias": r(d),
                   f"{pre}norm2.weight": 1 + r(d), f"{pre}norm2.bias": r(d),
                   f"{pre}mlp.fc1.weight": r(4 * d, d), f"{pre}mlp.fc1.bias": r(4 * d),
                   f"{pre}mlp.fc2.weight": r(d, 4 * d), f"{pre}mlp.fc2.bias": r(d)})

    for i in range(DEPTH):
        block(f"encoder.blocks.{i}.", D)
    for i in range(DDEPTH):
        block(f"decoder.blocks.{i}.", DD)
    return sd


def ref_block(x, sd, pre, heads):
    b, n, d = x.shape
    h = F.layer_norm(x, (d,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps=1e-6)
    bias = torch.cat([sd[pre + "attn.q_bias"], torch.zeros_like(sd[pre + "attn.v_bias"]), sd[pre + "attn.v_bias"]])
    qkv = F.linear(h, sd[pre + "attn.qkv.weight"], bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (d // heads) ** -0.5, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)).softmax(-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, n, -1), sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
    h = F.layer_norm(x, (d,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps=1e-6)
    return x + F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                        sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])


def ref_videomae(sd, videos, mask):
    """PretrainVisionTransformer.forward + the engine's target and loss. mask (B, N) bool, True = masked."""
    b = videos.shape[0]
    x = F.conv3d(videos, sd["encoder.patch_embed.proj.weight"], sd["encoder.patch_embed.proj.bias"], stride=(PT, P, P))
    x = x.flatten(2).transpose(1, 2) + official_table(N, D)
    x = x[~mask].reshape(b, -1, D)
    for i in range(DEPTH):
        x = ref_block(x, sd, f"encoder.blocks.{i}.", HEADS)
    x = F.layer_norm(x, (D,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps=1e-6)
    x = F.linear(x, sd["encoder_to_decoder.weight"])
    pos = official_table(N, DD).expand(b, -1, -1)
    vis, msk = pos[~mask].reshape(b, -1, DD), pos[mask].reshape(b, -1, DD)
    x = torch.cat([x + vis, sd["mask_token"] + msk], 1)
    for i in range(DDEPTH):
        x = ref_block(x, sd, f"decoder.blocks.{i}.", DHEADS)
    n_mask = msk.shape[1]
    x = F.layer_norm(x[:, -n_mask:], (DD,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps=1e-6)
    pred = F.linear(x, sd["decoder.head.weight"], sd["decoder.head.bias"])
    # engine_for_pretraining.py, normlize_target=True
    un = videos * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)
    sq = un.reshape(b, C, T // PT, PT, S // P, P, S // P, P).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, N, PT * P * P, C)
    norm = (sq - sq.mean(-2, keepdim=True)) / (sq.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    labels = norm.reshape(b, N, -1)[mask].reshape(b, -1, OUT)
    return pred, F.mse_loss(pred, labels)


def tube_mask(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spatial = torch.stack([torch.randperm(16, generator=g) < 12 for _ in range(b)])  # 12 of 16 hidden
    return spatial.repeat(1, T // PT)  # (B, N), True = masked (bool_masked_pos)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("videomae") / "checkpoint-799.pth"
    sd = official_state()
    torch.save({"model": sd, "epoch": 799}, path)
    return path, sd


def test_importer_forward_parity(official_file) -> None:
    path, sd = official_file
    model = mimkit.load(path, overrides=["model.encoder.num_frames=4", "model.encoder.img_size=32"])
    g = torch.Generator().manual_seed(1)
    videos = torch.randn(2, C, T, S, S, generator=g)
    mask = tube_mask(2, 2)
    with torch.no_grad():
        out = model({"video": videos}, noise=mask)
        pred, loss = ref_videomae(sd, videos, mask)
    assert torch.equal(out.mask.hidden, mask)
    assert (out.pred - pred).abs().max() <= 5e-6
    assert abs(float(out.loss) - float(loss)) <= 1e-6
    # any mask with the same count per sample, not only tubes (HF's bool_masked_pos)
    free = torch.zeros(2, N, dtype=torch.bool)
    free[0, 3:27], free[1, 8:32] = True, True
    with torch.no_grad():
        out2 = model({"video": videos}, noise=free)
        pred2, loss2 = ref_videomae(sd, videos, free)
    assert (out2.pred - pred2).abs().max() <= 5e-6 and abs(float(out2.loss) - float(loss2)) <= 1e-6


def test_convert_official_into_a_model_built_from_a_preset(official_file) -> None:
    _, sd = official_file
    model = mimkit.build({"method": "videomae_tiny_clips", "data": {"num_frames": T, "img_size": S}, "model": {
        "encoder": {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS},
        "decoder": {"embed_dim": DD, "depth": DDEPTH, "num_heads": DHEADS}}}).eval()
    missing, unexpected = model.load_state_dict(convert_official({"model": sd}), strict=True)
    assert not missing and not unexpected
    videos = torch.randn(1, C, T, S, S, generator=torch.Generator().manual_seed(3))
    mask = tube_mask(1, 4)
    with torch.no_grad():
        out = model({"video": videos}, noise=mask)
        pred, loss = ref_videomae(sd, videos, mask)
    assert (out.pred - pred).abs().max() <= 5e-6 and abs(float(out.loss) - float(loss)) <= 1e-6


def test_hf_decoder_eps_would_drift() -> None:
    """Why eps matters: the decoder's final LayerNorm at 1e-5 (Hugging Face's port) moves the
    predictions by more than the 5e-6 tolerance on the same weights."""
    sd = official_state()
    x = torch.randn(2, 5, DD) * 0.05
    a = F.layer_norm(x, (DD,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps=1e-6)
    b = F.layer_norm(x, (DD,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps=1e-5)
    assert (a - b).abs().max() > 5e-6
