"""Hugging Face ViTMAEForPreTraining folders in and out: ``mim export SRC --format hf OUT``
writes a folder that loads offline with ``from_pretrained`` and gives the same loss and
predictions on the same noise; ``mimkit.load(folder)`` reads an HF folder (ours or one made by
transformers) with the same outputs; both transformers key layouts are read."""
from __future__ import annotations

import json

import pytest
import torch

import mimkit
from mimkit.cli import main
from mimkit.export import export
from mimkit.plugin_api import read_hf_folder
from mimkit_mae.hf import canonical, export_hf, import_hf, load_hf

transformers = pytest.importorskip("transformers")

TINY = {"method": "mae_tiny_fashion_mnist",
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def _tiny_trained_like():
    torch.manual_seed(0)
    model = mimkit.build(TINY).eval()
    with torch.no_grad():  # move every parameter off its init so the check sees them all
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _inputs():
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    return x, noise


def test_cli_export_hf_loads_offline_with_the_same_loss(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny_trained_like()
    full = tmp_path / "model.safetensors"
    export(model, full, "full")  # a source the CLI loads, as a run folder would be
    assert main(["export", str(full), "--format", "hf", str(tmp_path / "hf")]) == 0
    said = capsys.readouterr().out
    assert "exporter vit_mae_hf" in said and "ViTMAEForPreTraining.from_pretrained" in said
    folder = tmp_path / "hf"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["mask_ratio"] == 0.75 and cfg["norm_pix_loss"] is True
    assert not list(tmp_path.glob(".hf.tmp-*"))  # written aside, renamed in one step
    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    x, noise = _inputs()
    with torch.no_grad():
        ours = model({"image": x}, noise=noise)
        theirs = hf(pixel_values=x, noise=noise)
    assert torch.equal(theirs.mask.bool(), ours.mask.hidden)
    assert (theirs.logits - ours.pred).abs().max() < 1e-5
    assert abs(float(theirs.loss) - float(ours.loss)) < 1e-6
    # and back through the core's loader: identical weights, identical loss
    back = mimkit.load(folder)
    assert back.recipe.model["encoder"]["norm_eps"] == 1e-6
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(back({"image": x}, noise=noise).loss, ours.loss)
        # the explicit mask (HF's convention, True = hidden) gives the same loss
        torch.testing.assert_close(back({"image": x}, mask=theirs.mask.bool()).loss, theirs.loss, rtol=0, atol=1e-6)


def test_cli_export_hf_refuses_clearly(tmp_path, capsys) -> None:
    full = tmp_path / "m.safetensors"
    export(_tiny_trained_like(), full, "full")
    assert main(["export", str(full), "--format", "onnx", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "export format must be one of ['timm', 'full', 'hf'], got 'onnx'" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["export", str(full), "--format", "hf", str(tmp_path / "busy")]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    # SupMAE is an MAE plus a classification loss that ViTMAE cannot express: refused, with each exporter's reason
    sup = mimkit.build({"method": "supmae_tiny_fashion_mnist", "model": TINY["model"]}).eval()
    export(sup, tmp_path / "sup.safetensors", "full")
    assert main(["export", str(tmp_path / "sup.safetensors"), "--format", "hf", str(tmp_path / "sup_hf")]) == 2
    err = capsys.readouterr().err
    assert "no installed 'hf' exporter describes this model (supmae_tiny_fashion_mnist)" in err
    assert "vit_mae_hf (mae): export to ViTMAEForPreTraining needs an MAE model; losses: one `masked_mse`" in err
    assert "videomae_hf (videomae)" in err
    assert not (tmp_path / "sup_hf").exists() and not list(tmp_path.glob(".sup_hf.tmp-*"))
    # a model whose encoder and decoder norms differ cannot be one layer_norm_eps
    odd = mimkit.build({**TINY, "model": {**TINY["model"], "encoder": {**TINY["model"]["encoder"], "norm_eps": 1e-5}}})
    with pytest.raises(mimkit.MimkitError, match=r"one LayerNorm eps everywhere.*\[1e-06, 1e-05\]"):
        export(odd, tmp_path / "odd_hf", "hf")


def test_hf_folder_with_its_own_eps_loads_and_matches(tmp_path) -> None:
    cfg = transformers.ViTMAEConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=256, decoder_hidden_size=32,
                                    decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                    decoder_intermediate_size=128, norm_pix_loss=True, mask_ratio=0.75)
    torch.manual_seed(3)
    hf = transformers.ViTMAEForPreTraining(cfg).eval()  # layer_norm_eps 1e-12, as HF's own ports
    hf.save_pretrained(tmp_path / "hf")
    model = mimkit.load(tmp_path / "hf")  # the core's loader, through the plugin's importer
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}
    assert torch.equal(load_hf(tmp_path / "hf").state_dict()["encoder.vit.cls_token"], model.encoder.vit.cls_token)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model({"image": x}, noise=noise), hf(pixel_values=x, noise=noise)
    assert (theirs.logits - ours.pred).abs().max() < 1e-5
    assert abs(float(theirs.loss) - float(ours.loss)) < 1e-6
    # its timm export carries the eps too: the printed create_model call rebuilds the same encoder
    import functools

    import timm

    info = export(model, tmp_path / "enc.safetensors", "timm")
    assert "norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-12)" in info["create_model"]
    tm = eval(info["create_model"], {"timm": timm, "functools": functools, "torch": torch}).eval()
    with torch.no_grad():
        assert (tm.forward_features(x) - model.encoder.forward_features(x)).abs().max() < 1e-6
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
