"""TTT-MAE: the MAE loss, the per-image loop against a hand-written step, batched == loop."""
from __future__ import annotations

import copy

import pytest
import torch

from mimkit.api import build
from mimkit.plugin_api import Mask, normalize_patches, patchify
from mimkit_ttt_mae import StackedViT, adapt_batched, adapt_loop, build_head, mae_loss, mask_noise, supports

SMALL = {"method": "mae_tiny_fashion_mnist",
         "model": {"encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2},
                   "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}}}


def _setup(kind="vit"):
    torch.manual_seed(0)
    model = build(SMALL).eval()
    head = build_head(kind, model.encoder, 10, 16, 1, 2).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return model, head


def test_mae_loss_against_direct_computation():
    model, _ = _setup()
    x, noise = torch.randn(1, 32, 32), torch.rand(3, 64)
    loss = mae_loss(model.encoder, model.decoder, model.target, x, noise, 16)
    xc = x.expand(3, -1, -1, -1)
    mask = Mask.from_noise(noise, 16)
    assert int(mask.hidden.sum(1)[0]) == 48  # 75% of 64 hidden
    pred = model.decoder(model.encoder.encode(model.encoder.embed(xc, mask), mask), mask)
    patches = patchify(xc, 4)
    tgt = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    direct = ((pred - tgt) ** 2).mean(-1)[mask.hidden].mean()
    torch.testing.assert_close(loss, direct)
    torch.testing.assert_close(tgt, normalize_patches(patches))


def test_loop_step_matches_hand_written_sgd_and_leaves_the_model_unchanged():
    model, head = _setup()
    before = copy.deepcopy(model.state_dict())
    x, noise = torch.randn(1, 1, 32, 32), mask_noise([7], 2, 4, 64, 0)
    logits = adapt_loop(model, head, x, noise, lr=0.05, momentum=0.9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # by hand: SGD with momentum on the encoder only, decoder frozen
    enc = copy.deepcopy(model.encoder)
    bufs = {}
    for s in range(2):
        loss = mae_loss(enc, model.decoder, model.target, x[0], noise[0, s], 16)
        params = {k: p for k, p in enc.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                bufs[k] = g.clone() if s == 0 else bufs[k] * 0.9 + g
                p -= 0.05 * bufs[k]
    with torch.no_grad():
        torch.testing.assert_close(logits[0, -1], head(enc.forward_features(x))[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits[0, 0], head(model.encoder.forward_features(x))[0])
    assert not torch.allclose(logits[0, 0], logits[0, -1])  # the adaptation did something


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap: no CPU SDPA-backward rule
def test_batched_equals_loop():
    """Both batched implementations give the loop's logits at every step, for both heads."""
    for kind, impl in (("vit", "stacked"), ("linear", "stacked"), ("vit", "vmap")):
        model, head = _setup(kind)
        x = torch.randn(3, 1, 32, 32)
        noise = mask_noise(range(3), 3, 4, 64, 1)
        a = adapt_loop(model, head, x, noise, lr=0.05)
        b = adapt_batched(model, head, x, noise, lr=0.05, chunk=2, impl=impl)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        assert not torch.allclose(a[:, 0], a[:, -1])


def test_stacked_with_learned_positions_and_fallback():
    """A trainable position table is stacked per image too; an encoder the hand-written forward
    does not cover (mask tokens) falls back to vmap under impl=auto and is refused by stacked."""
    torch.manual_seed(0)
    learned = {**SMALL, "model": {**SMALL["model"], "encoder": {**SMALL["model"]["encoder"], "pos_embed": "learned"}}}
    model = build(learned).eval()
    assert model.encoder.vit.pos_embed.requires_grad
    head = build_head("linear", model.encoder, 10, 16, 1, 2).eval()
    x, noise = torch.randn(2, 1, 32, 32), mask_noise(range(2), 2, 4, 64, 2)
    stacked = StackedViT(model.encoder, 2)
    assert "vit.pos_embed" in stacked.names and stacked.stacked["vit.pos_embed"].shape == (2, 1, 65, 32)
    a = adapt_loop(model, head, x, noise, lr=0.05)
    torch.testing.assert_close(adapt_batched(model, head, x, noise, lr=0.05, impl="stacked"), a, atol=2e-5, rtol=1e-4)
    with torch.no_grad():  # the functional forward equals the module's, with the base weights
        torch.testing.assert_close(stacked.forward_features(x), model.encoder.forward_features(x), atol=1e-5, rtol=1e-5)
    tokens = {**SMALL, "model": {**SMALL["model"], "encoder": {**SMALL["model"]["encoder"], "mode": "with_mask_token"}}}
    enc = build(tokens).encoder
    assert "visible-only" in supports(enc)
    with pytest.raises(ValueError, match="visible-only"):
        StackedViT(enc, 2)


def test_mask_noise_is_per_image():
    a = mask_noise([3, 5], 2, 4, 64, 0)
    b = mask_noise([5], 2, 4, 64, 0)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


def test_auto_chunk_keeps_the_measured_number_of_copies_in_flight():
    from mimkit_ttt_mae import auto_chunk

    assert [auto_chunk(c) for c in (16, 128, 300)] == [16, 2, 1]  # CPU: ~256 copies
    assert [auto_chunk(c, "cuda") for c in (32, 128)] == [256, 64]  # CUDA: ~8192 (the H200 run: 64 x 128)
    assert auto_chunk(128, torch.device("cpu"), budget=1024) == 8
