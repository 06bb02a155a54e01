"""The composed model: visible-only compute, mask-token mode, loss over hidden tokens only."""
import pytest
import torch

import mimkit
from mimkit.types import Outputs

pytest.importorskip("mimkit_mae")

TINY = {"method": "mae_tiny_fashion_mnist",
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def test_encoder_computes_on_kept_tokens_only():
    model = mimkit.build(TINY)
    seen = []
    model.encoder.vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    x = torch.randn(4, 1, 32, 32)
    model({"image": x}, noise=torch.rand(4, 64))
    assert seen[-1] == (4, 1 + 16, 64)  # [CLS] + int(64 * 0.25) visible patches, nothing else


def test_visible_only_embed_equals_conv_embed_of_kept_patches():
    model = mimkit.build(TINY)
    x = torch.randn(2, 1, 32, 32)
    mask = model.make_mask({"image": x}, mimkit.Context(), torch.rand(2, 64))
    tokens = model.encoder.embed(x, mask)
    vit = model.encoder.vit
    full = vit.patch_embed(x) + vit.pos_embed[:, 1:]
    kept = torch.gather(full, 1, mask.ids_keep.unsqueeze(-1).expand(-1, -1, 64))
    assert torch.allclose(tokens[:, 1:], kept, atol=1e-5)
    assert torch.allclose(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[0].expand(2, -1), atol=1e-6)


def test_with_mask_token_mode_sees_all_tokens():
    model = mimkit.build(TINY | {"model": TINY["model"] | {"encoder": TINY["model"]["encoder"] | {"mode": "with_mask_token"}}})
    seen = []
    model.encoder.vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = model({"image": torch.randn(2, 1, 32, 32)}, noise=torch.rand(2, 64))
    assert seen[-1] == (2, 65, 64) and out.pred.shape == (2, 64, 16)


def test_loss_counts_hidden_tokens_only():
    model = mimkit.build(TINY)
    x = torch.randn(3, 1, 32, 32)
    out = model({"image": x}, noise=torch.rand(3, 64))
    hidden = out.mask.hidden
    per_token = ((out.pred - out.target) ** 2).mean(-1)
    assert torch.allclose(out.loss, per_token[hidden].mean(), atol=1e-6)
    # changing predictions of visible tokens leaves the loss unchanged
    pred2 = torch.where(hidden.unsqueeze(-1), out.pred, out.pred + 100.0)
    again = model.losses["rec"](Outputs(pred=pred2, target=out.target, mask=out.mask), {}, None)
    assert torch.allclose(again, out.loss, atol=1e-6)


def test_features_equal_timm_forward_features():
    model = mimkit.build(TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(model.encoder.forward_features(x), model.encoder.vit.forward_features(x))
    assert model.features(x).shape == (2, 64)


def test_components_honour_the_typed_contracts():
    """The Protocols the hookspecs are typed with describe what the built-ins really are."""
    from mimkit.components import Decoder, Encoder, EvalProtocol, Target, Teacher, Visualizer
    from mimkit.plugins import registry

    pytest.importorskip("mimkit_mae")
    model = mimkit.build({"method": "mae_tiny_fashion_mnist", "model": {"teacher": {"name": "ema"}}})
    assert isinstance(model.encoder, Encoder) and isinstance(model.decoder, Decoder)
    assert isinstance(model.target, Target) and isinstance(model.teacher, Teacher)
    assert not isinstance(model.masker, Decoder)  # structural, but not vacuous: a masker has no `predict`
    reg = registry()
    assert isinstance(reg.get("visualizers", "reconstruction")(), Visualizer)
    for name in ("knn", "linprobe", "finetune"):
        cls = reg.get("protocols", name)
        assert isinstance(cls(cls.Config()), EvalProtocol)
