"""The core's import layering (pyproject.toml [tool.importlinter]) and no imports of plugins,
checked with import-linter."""
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

import pytest

importlinter_cli = pytest.importorskip("importlinter.cli")

ROOT = Path(__file__).resolve().parents[1]


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def test_core_layers_and_no_plugin_imports(tmp_path, monkeypatch, capsys):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    plugins = sorted({ep.value.split(".")[0].split(":")[0] for ep in md.entry_points(group="mimkit")} - {"mimkit"})
    assert plugins, "no plugin installed: the forbidden contract would check nothing"
    lines = ["[tool.importlinter]", f'root_package = "{config["root_package"]}"', "include_external_packages = true", ""]
    for c in config["contracts"]:
        lines += ["[[tool.importlinter.contracts]]", f'name = "{c["name"]}"', f'type = "{c["type"]}"',
                  f"layers = {_toml_list(c['layers'])}", ""]
    lines += ["[[tool.importlinter.contracts]]", 'name = "the core never imports a plugin"', 'type = "forbidden"',
              'source_modules = ["mimkit"]', f"forbidden_modules = {_toml_list(plugins)}", ""]
    path = tmp_path / "importlinter.toml"
    path.write_text("\n".join(lines))
    monkeypatch.syspath_prepend(str(ROOT / "core"))
    code = importlinter_cli.lint_imports(config_filename=str(path), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 kept, 0 broken" in out, out
