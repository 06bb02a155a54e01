"""Checkpoints in and out through plugins: a plugin's export format through ``mim export SRC
--format NAME OUT`` (hook ``mimkit_exporters``: tried in name order, the first whose check
accepts the model writes the folder; a malformed exporter marks its plugin broken), and a
Hugging Face folder no importer knows."""
import torch

import mimkit
from mimkit.export import export
from test_plugins import make_plugin, registry_in_subprocess

NPZ = """
    import numpy as np
    from mimkit.plugin_api import ConfigError, Exporter, hookimpl
    MIMKIT_API = 2

    def needs_decoder(model):
        if getattr(model, "decoder", None) is None:
            raise ConfigError("npz_decoder writes the decoder: this model has none")

    def write(model, folder):
        np.savez(folder / "decoder.npz", **{k: v.numpy() for k, v in model.decoder.state_dict().items()})

    def refuse(model):
        raise ConfigError("never")

    @hookimpl
    def mimkit_exporters():
        return {"a_never": Exporter(format="npz", check=refuse, write=write),
                "npz_decoder": Exporter(format="npz", check=needs_decoder, write=write, describes="the decoder as npz",
                                        load_hint="numpy.load({path} + '/decoder.npz')")}
"""


def test_a_plugin_format_exports_through_the_cli(tmp_path, monkeypatch, capsys):
    import numpy as np

    from mimkit.cli import main
    from mimkit.plugins import reset_registry

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    make_plugin(plugins, "mimkit-npz", "npz", "mimkit_npz", NPZ)
    torch.manual_seed(0)
    model = mimkit.build({"method": "mae_tiny_fashion_mnist",
                          "model": {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                                    "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}}})
    export(model, tmp_path / "m.safetensors", "full")
    monkeypatch.syspath_prepend(str(plugins))  # the plugin is "installed" for this test only
    reset_registry()
    try:
        assert main(["export", str(tmp_path / "m.safetensors"), "--format", "npz", str(tmp_path / "npz")]) == 0
        said = capsys.readouterr().out
        assert main(["export", str(tmp_path / "m.safetensors"), "--format", "onnx", str(tmp_path / "x")]) == 2
        assert "must be one of ['timm', 'full', 'hf', 'npz'], got 'onnx'" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        reset_registry()
    assert "exporter npz_decoder: the decoder as npz" in said and "numpy.load(" in said
    saved = np.load(tmp_path / "npz" / "decoder.npz")  # the first exporter refused; the second wrote
    assert sorted(saved.files) == sorted(model.decoder.state_dict())
    assert np.array_equal(saved["pred.weight"], model.decoder.state_dict()["pred.weight"].numpy())


def test_a_malformed_exporter_breaks_only_its_plugin(tmp_path):
    make_plugin(tmp_path, "mimkit-badexp", "badexp", "mimkit_badexp", """
        from mimkit.plugin_api import hookimpl
        MIMKIT_API = 2
        @hookimpl
        def mimkit_exporters():
            return {"x": lambda model, out: None}
    """)
    res = registry_in_subprocess(tmp_path)
    plugins = {p[0]: p for p in res["plugins"]}
    assert "exporter 'x'" in plugins["badexp"][2] and "expected an Exporter (format, check, write)" in plugins["badexp"][2]
    assert plugins["mae"][2] is None and "exporters" in plugins["mae"][3]


def test_a_hugging_face_folder_no_importer_knows_is_named(tmp_path):
    import json

    import pytest
    from safetensors.torch import save_file

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, str(folder / "model.safetensors"))
    with pytest.raises(mimkit.CheckpointError, match=r"no installed importer recognizes this Hugging Face folder "
                                                     r"\(config.json model_type 'bert', architectures \['BertModel'\]\)"
                                                     r".*vit_mae_hf \(mae\)"):
        mimkit.load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(mimkit.CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        mimkit.load(folder)
