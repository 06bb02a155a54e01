"""Exports: the encoder for timm (same features), the full model for mimkit.load (same outputs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

import mimkit
from mimkit import checkpoint as ckpt
from mimkit.config import dump
from mimkit.evaluate import load_source
from mimkit.export import export


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    """A tiny MAE with non-trivial weights (perturbed from init, so norms are not identity)."""
    torch.manual_seed(0)
    recipe = mimkit.resolve({"method": "mae_tiny_fashion_mnist"})
    model = mimkit.api.build_model(recipe)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.recipe = recipe
    return model.eval()


@pytest.fixture()
def ckpt_dir(tiny, tmp_path) -> Path:
    """A checkpoint folder as the trainer writes it (model.safetensors + recipe.yaml)."""
    d = tmp_path / "step_1"
    d.mkdir()
    from safetensors.torch import save_file

    save_file(ckpt.state_dict_for_save(tiny), str(d / "model.safetensors"))
    (d / "recipe.yaml").write_text(dump(tiny.recipe))
    return d


def test_timm_export_round_trip(tiny, ckpt_dir, tmp_path, capsys):
    from mimkit.cli import main

    out = tmp_path / "enc.safetensors"
    assert main(["export", str(ckpt_dir), "--format", "timm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    call = next(line.split("model = ", 1)[1] for line in printed.splitlines() if "model = timm.create_model" in line)
    assert "num_classes=0" in call and "patch_size=4" in call and "in_chans=1" in call and "img_size=32" in call
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["mimkit_content"] == "encoder" and "mimkit_recipe" in meta
    assert keys == set(tiny.encoder.vit.state_dict())  # exactly timm's key names
    tm = eval(call, {"timm": timm}).eval()  # the very call printed for the user
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = tiny.encoder.forward_features(x), tm.forward_features(x)
        assert ours.shape == theirs.shape == (3, 65, 192)
        assert (ours - theirs).abs().max() < 1e-5
        assert (tiny.features(x, "cls") - tm(x)).abs().max() < 1e-5  # global_pool='token', no fc_norm
    # mimkit reads the encoder export back (encoder weights under encoder.vit.)
    back = load_source(out)
    direct = mimkit.load(out)  # the public loader restores the encoder too
    with torch.no_grad():
        assert (back.encoder.forward_features(x) - ours).abs().max() < 1e-6
        assert (direct.encoder.forward_features(x) - ours).abs().max() < 1e-6


def test_full_export_round_trip_through_mimkit_load(tiny, tmp_path):
    out = tmp_path / "full.safetensors"
    info = export(tiny, out, "full")
    assert info["num_tensors"] == len(tiny.state_dict())
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["mimkit_content"] == "full"
    loaded = mimkit.load(out)
    assert dump(loaded.recipe) == dump(tiny.recipe)
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(4, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = tiny({"image": x}, noise=noise)
        b = loaded({"image": x}, noise=noise)
    torch.testing.assert_close(a.pred, b.pred, rtol=0, atol=0)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    assert a.pred.shape == (4, 64, 16)
    # the full export is a valid source for training state: the whole state dict, strict
    mimkit.api.load_state(mimkit.api.build_model(tiny.recipe), ckpt.load_tensors(out), str(out))


def test_export_refuses_bad_format_and_suffix(tiny, tmp_path):
    with pytest.raises(mimkit.MimkitError):
        export(tiny, tmp_path / "x.safetensors", "onnx")
    with pytest.raises(mimkit.MimkitError):
        export(tiny, tmp_path / "x.pt", "full")


def test_plot_regenerates_loss_curve(tmp_path):
    from mimkit.cli import main

    rows = [{"step": s, "epoch": 0, "loss": 1.0 / s, "loss/rec": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "loss_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "missing")]) == 2
