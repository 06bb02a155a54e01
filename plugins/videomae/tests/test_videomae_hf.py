"""Hugging Face VideoMAEForPreTraining folders in and out, on the same bool_masked_pos."""
from __future__ import annotations

import json

import pytest
import torch

import mimkit
from mimkit.cli import main
from mimkit.export import export
from mimkit_videomae.hf import canonical, load_hf

transformers = pytest.importorskip("transformers")

TINY = {"method": "videomae_tiny_clips", "data": {"num_frames": 4},  # the model follows the data's geometry
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def _inputs():
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, 3, 4, 32, 32, generator=g)  # (B, C, T, H, W); 2 x 4 x 4 = 32 cubes
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0, :24], mask[1, 8:] = True, True
    return video, mask


def test_cli_export_loads_offline_and_matches(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = mimkit.build(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    export(model, tmp_path / "m.safetensors", "full")
    assert main(["export", str(tmp_path / "m.safetensors"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    folder = tmp_path / "hf"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["use_mean_pooling"] is False and cfg["norm_pix_loss"] is True
    hf = transformers.VideoMAEForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    video, mask = _inputs()
    with torch.no_grad():
        ours = model({"video": video}, mask=mask)  # HF's bool_masked_pos convention: True = hidden
        theirs = hf(pixel_values=video.transpose(1, 2), bool_masked_pos=mask)
        assert torch.equal(model({"video": video}, noise=mask).loss, ours.loss)  # the masker's own map path
    # Hugging Face's decoder norm uses eps 1e-5 (official: 1e-6): a small, bounded drift
    assert (theirs.logits - ours.pred).abs().max() < 1e-4
    assert abs(float(theirs.loss) - float(ours.loss)) < 1e-5
    back = mimkit.load(folder)  # the core's loader: with HF's decoder eps, the same numbers as transformers
    assert back.decoder.norm.eps == 1e-5 and back.decoder.blocks[0].norm1.eps == 1e-6
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        again = back({"video": video}, mask=mask)
    assert (theirs.logits - again.pred).abs().max() < 1e-5
    assert abs(float(theirs.loss) - float(again.loss)) < 1e-6
    official = load_hf(folder, decoder_norm_eps=None)  # the config's eps everywhere: the original model
    with torch.no_grad():
        assert torch.equal(official({"video": video}, mask=mask).loss, ours.loss)


def test_key_layouts() -> None:
    assert canonical("videomae.encoder.layer.0.attention.attention.q_bias") == "videomae.layers.0.attention.q_proj.bias"
    assert canonical("decoder.decoder_layers.1.attention.attention.value.bias") == "decoder.decoder_layers.1.attention.v_proj.bias"
    assert canonical("videomae.encoder.layer.2.output.dense.weight") == "videomae.layers.2.mlp.fc2.weight"
