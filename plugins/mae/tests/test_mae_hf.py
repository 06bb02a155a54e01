"""Hugging Face ViTMAEForPreTraining folders in and out: an export loads offline with
``from_pretrained`` and gives the same loss and predictions on the same noise; an HF folder
loads into mimkit with the same outputs; both transformers key layouts are read."""
from __future__ import annotations

import json

import pytest
import torch

import mimkit
from mimkit.plugin_api import read_hf_folder
from mimkit_mae.hf import canonical, export_hf, import_hf, load_hf

transformers = pytest.importorskip("transformers")

TINY = {"method": "mae_tiny_fashion_mnist",
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def test_export_loads_offline_with_the_same_loss(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = mimkit.build(TINY).eval()
    with torch.no_grad():  # move every parameter off its init so the check sees them all
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = export_hf(model, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["mask_ratio"] == 0.75 and cfg["norm_pix_loss"] is True
    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model({"image": x}, noise=noise)
        theirs = hf(pixel_values=x, noise=noise)
    assert torch.equal(theirs.mask.bool(), ours.mask.hidden)
    assert (theirs.logits - ours.pred).abs().max() < 1e-5
    assert abs(float(theirs.loss) - float(ours.loss)) < 1e-6
    # and back: the folder loads into mimkit with identical weights
    back = load_hf(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(back({"image": x}, noise=noise).loss, ours.loss)


def test_hf_folder_with_its_own_eps_loads_and_matches(tmp_path) -> None:
    cfg = transformers.ViTMAEConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=256, decoder_hidden_size=32,
                                    decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                    decoder_intermediate_size=128, norm_pix_loss=True, mask_ratio=0.75)
    torch.manual_seed(3)
    hf = transformers.ViTMAEForPreTraining(cfg).eval()  # layer_norm_eps 1e-12, as HF's own ports
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model({"image": x}, noise=noise), hf(pixel_values=x, noise=noise)
    assert (theirs.logits - ours.pred).abs().max() < 1e-5
    assert abs(float(theirs.loss) - float(ours.loss)) < 1e-6
    # the importer hook reads a bare state dict too (sizes from the weights)
    recipe, state, _ = import_hf(read_hf_folder(tmp_path / "hf")["state"])
    assert recipe["model"]["encoder"]["embed_dim"] == 64 and "encoder.vit.blocks.1.attn.qkv.weight" in state


def test_both_transformers_key_layouts_are_read() -> None:
    assert canonical("vit.encoder.layer.3.attention.attention.query.weight") == "vit.layers.3.attention.q_proj.weight"
    assert canonical("vit.encoder.layer.0.attention.output.dense.bias") == "vit.layers.0.attention.o_proj.bias"
    assert canonical("decoder.decoder_layers.1.intermediate.dense.weight") == "decoder.decoder_layers.1.mlp.fc1.weight"
    assert canonical("decoder.decoder_layers.1.output.dense.weight") == "decoder.decoder_layers.1.mlp.fc2.weight"
    assert canonical("vit.layers.2.attention.k_proj.weight") == "vit.layers.2.attention.k_proj.weight"
    assert canonical("decoder.decoder_encoder.layer.0.attention.attention.key.bias") == "decoder.decoder_layers.0.attention.k_proj.bias"
