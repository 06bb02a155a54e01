"""Official facebookresearch/mae checkpoints load and give the official outputs.

The reference below is written from the formulas of the official ``models_mae.py`` in plain
torch, reading the official key names directly; mimkit's model is built from the converted
file through the public API and must agree within 1e-5.
"""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.errors import CheckpointError
from mimkit.testing import reference_vit_block

D, DEPTH, HEADS = 192, 2, 3  # ViT-Tiny width (3 heads, as the importer assumes for 192)
DD, DDEPTH, DHEADS = 64, 2, 16  # decoder: the official decoder always has 16 heads
P, IMG, C = 8, 32, 3
N = (IMG // P) ** 2


def official_sincos(dim: int, side: int) -> torch.Tensor:
    """get_2d_sincos_pos_embed(dim, side, cls_token=True), written out."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega
        return torch.cat([out.sin(), out.cos()], 1)

    gw, gh = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy")  # np.meshgrid(w, h)
    emb = torch.cat([one(dim // 2, gw), one(dim // 2, gh)], 1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb]).float().unsqueeze(0)


def random_official_state(seed: int = 0, decoder: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {"cls_token": r(1, 1, D), "pos_embed": official_sincos(D, IMG // P),
          "patch_embed.proj.weight": r(D, C, P, P), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D)}

    def block(prefix, d):
        sd.update({f"{prefix}norm1.weight": 1 + r(d), f"{prefix}norm1.bias": r(d),
                   f"{prefix}attn.qkv.weight": r(3 * d, d), f"{prefix}attn.qkv.bias": r(3 * d),
                   f"{prefix}attn.proj.weight": r(d, d), f"{prefix}attn.proj.bias": r(d),
                   f"{prefix}norm2.weight": 1 + r(d), f"{prefix}norm2.bias": r(d),
                   f"{prefix}mlp.fc1.weight": r(4 * d, d), f"{prefix}mlp.fc1.bias": r(4 * d),
                   f"{prefix}mlp.fc2.weight": r(d, 4 * d), f"{prefix}mlp.fc2.bias": r(d)})

    for i in range(DEPTH):
        block(f"blocks.{i}.", D)
    if decoder:
        sd.update({"mask_token": r(1, 1, DD), "decoder_pos_embed": official_sincos(DD, IMG // P),
                   "decoder_embed.weight": r(DD, D), "decoder_embed.bias": r(DD),
                   "decoder_norm.weight": 1 + r(DD), "decoder_norm.bias": r(DD),
                   "decoder_pred.weight": r(P * P * C, DD), "decoder_pred.bias": r(P * P * C)})
        for i in range(DDEPTH):
            block(f"decoder_blocks.{i}.", DD)
    return sd


ref_block = reference_vit_block  # plain torch, timm/official key names


def ref_mae(sd, imgs, noise, ratio=0.75, norm_pix=True):
    """MaskedAutoencoderViT.forward, from the official formulas."""
    x = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    x = x + sd["pos_embed"][:, 1:]
    b, n, d = x.shape
    keep = int(n * (1 - ratio))
    ids_shuffle = torch.argsort(noise, 1)
    ids_restore = torch.argsort(ids_shuffle, 1)
    x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones(b, n)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    x = torch.cat([(sd["cls_token"] + sd["pos_embed"][:, :1]).expand(b, -1, -1), x], 1)
    for i in range(DEPTH):
        x = ref_block(x, sd, f"blocks.{i}.", HEADS)
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    x = F.linear(x, sd["decoder_embed.weight"], sd["decoder_embed.bias"])
    mask_tokens = sd["mask_token"].repeat(b, n + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:], mask_tokens], 1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], 1) + sd["decoder_pos_embed"]
    for i in range(DDEPTH):
        x = ref_block(x, sd, f"decoder_blocks.{i}.", DHEADS)
    x = F.layer_norm(x, (DD,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], eps=1e-6)
    pred = F.linear(x, sd["decoder_pred.weight"], sd["decoder_pred.bias"])[:, 1:]
    h = w = IMG // P
    target = imgs.reshape(b, C, h, P, w, P).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, P * P * C)  # nchpwq->nhwpqc
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum(), pred, mask


def test_official_checkpoint_gives_official_outputs(tmp_path):
    sd = random_official_state()
    path = tmp_path / "mae_pretrain_full.pth"
    torch.save({"model": sd, "args": argparse.Namespace(norm_pix_loss=True), "epoch": 799}, path)
    model = mimkit.load(path)
    torch.manual_seed(1)
    imgs, noise = torch.randn(3, C, IMG, IMG), torch.rand(3, N)
    ref_loss, ref_pred, ref_mask = ref_mae(sd, imgs, noise)
    out = model({"image": imgs}, noise=noise)
    assert torch.equal(out.mask.hidden.float(), ref_mask)
    assert (out.pred - ref_pred).abs().max().item() <= 1e-5
    assert abs(out.loss.item() - ref_loss.item()) <= 1e-5
    assert model.recipe.model["encoder"]["num_heads"] == HEADS and model.recipe.model["decoder"]["depth"] == DDEPTH


def test_convert_and_build_from_preset_with_overrides():
    """The README's conversion path: a preset with size overrides + convert_official."""
    from mimkit_mae import convert_official

    sd = random_official_state(seed=3)
    model = mimkit.build({"method": "mae_vit_base_patch16"}, [
        f"data.img_size={IMG}", f"model.encoder.patch_size={P}", f"model.encoder.embed_dim={D}",
        f"model.encoder.depth={DEPTH}", f"model.encoder.num_heads={HEADS}", f"model.decoder.embed_dim={DD}",
        f"model.decoder.depth={DDEPTH}"]).eval()
    model.load_state_dict(convert_official(sd))
    imgs, noise = torch.randn(2, C, IMG, IMG), torch.rand(2, N)
    ref_loss, _, _ = ref_mae(sd, imgs, noise)
    assert math.isclose(model({"image": imgs}, noise=noise).loss.item(), ref_loss.item(), abs_tol=1e-5)


def test_encoder_only_checkpoint_loads_with_warning(tmp_path):
    sd = random_official_state(decoder=False)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": sd}, path)
    with pytest.warns(UserWarning, match="encoder-only"):
        model = mimkit.load(path)
    assert torch.equal(model.encoder.vit.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])


def test_other_architecture_is_a_clear_error(tmp_path):
    from mimkit.api import load_state

    model = mimkit.build({"method": "mae_tiny_fashion_mnist"})
    from mimkit_mae import convert_official

    state = convert_official(random_official_state())
    with pytest.raises(CheckpointError) as e:
        load_state(model, state, "other.pth")
    msg = str(e.value)
    assert "other.pth does not fit this model" in msg
    assert "encoder.vit.patch_embed.proj.weight: checkpoint (192, 3, 8, 8) vs model (192, 1, 4, 4)" in msg
    assert "missing keys: encoder.vit.blocks.2." in msg  # the tiny preset has 6 blocks, the file 2


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        mimkit.load(path)
    assert not marker.exists()


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = mimkit.build({"method": "mae_tiny_fashion_mnist"})
    ckpt = mimkit.build({"method": "mae_tiny_fashion_mnist"},
                        ["model.decoder.grad_checkpointing=true", "model.encoder.grad_checkpointing=true"])
    ckpt.load_state_dict(plain.state_dict())
    x, noise = torch.randn(4, 1, 32, 32), torch.rand(4, 64)
    for m in (plain, ckpt):
        m(({"image": x}), noise=noise).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name
