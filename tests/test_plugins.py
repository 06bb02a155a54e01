"""Plugin discovery through real entry points: broken plugins, duplicates, API versions."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mimkit.plugins import build_registry


def make_plugin(root: Path, dist: str, ep_name: str, module: str, body: str) -> None:
    """An installed distribution as importlib.metadata sees it: a module + a .dist-info folder."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[mimkit]\n{ep_name} = {module}\n")


GOOD = """
    import attrs
    from torch import nn
    from mimkit.plugin_api import hookimpl
    MIMKIT_API = 2

    class CheckerMasker(nn.Module):
        @attrs.define
        class Config:
            ratio: float = 0.5

    @hookimpl
    def mimkit_maskers():
        return {"checker": CheckerMasker}
"""


def registry_in_subprocess(root: Path, env_extra: dict | None = None) -> dict:
    code = textwrap.dedent("""
        import json
        from mimkit.plugins import build_registry
        reg = build_registry()
        print(json.dumps({"plugins": [[p.name, p.version, p.error, p.components] for p in reg.plugins],
                          "maskers": {k: reg.providers["maskers"][k] for k in reg.names("maskers")}}))
    """)
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"} | (env_extra or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_installed_plugin_is_discovered_and_broken_ones_are_reported(tmp_path):
    make_plugin(tmp_path, "mimkit-checker", "checker", "mimkit_checker", GOOD)
    make_plugin(tmp_path, "mimkit-broken", "broken", "mimkit_broken", "raise ImportError('no such backend xyz')\n")
    make_plugin(tmp_path, "mimkit-old", "old", "mimkit_old", "MIMKIT_API = 1\n")
    make_plugin(tmp_path, "mimkit-badtype", "badtype", "mimkit_badtype", """
        from mimkit import hookimpl
        MIMKIT_API = 2
        @hookimpl
        def mimkit_losses():
            return ["not", "a", "mapping"]
    """)
    res = registry_in_subprocess(tmp_path)
    plugins = {p[0]: p for p in res["plugins"]}
    assert plugins["checker"][1] == "0.3" and plugins["checker"][2] is None
    assert res["maskers"]["checker"] == "checker" and res["maskers"]["random"] == "mimkit (builtin)"
    assert "no such backend xyz" in plugins["broken"][2]
    old = plugins["old"][2]  # written for API 1 (mimkit_methods): refused, and told what to do
    assert "written for hook API 1" in old and "provides 2" in old and "mimkit_presets" in old
    assert "badtype" in plugins["badtype"][2] and "expected a mapping" in plugins["badtype"][2]


def test_duplicate_names_are_rejected_naming_both_plugins(tmp_path):
    make_plugin(tmp_path, "mimkit-checker", "checker", "mimkit_checker", GOOD)
    make_plugin(tmp_path, "mimkit-copycat", "copycat", "mimkit_copycat", GOOD)
    res = registry_in_subprocess(tmp_path)
    plugins = {p[0]: p for p in res["plugins"]}
    err = plugins["copycat"][2]
    assert "'checker'" in err and "'copycat'" in err and "two plugins" in err
    assert res["maskers"]["checker"] == "checker"  # the first one still works


def test_component_without_config_is_refused(tmp_path):
    make_plugin(tmp_path, "mimkit-noconf", "noconf", "mimkit_noconf", """
        from mimkit import hookimpl
        MIMKIT_API = 2
        class M: pass
        @hookimpl
        def mimkit_maskers():
            return {"m": M}
    """)
    make_plugin(tmp_path, "mimkit-badpickle", "badpickle", "mimkit_badpickle", """
        from mimkit import hookimpl
        MIMKIT_API = 2
        @hookimpl
        def mimkit_pickled():
            return {"CfgNode": dict}  # not a dotted module path
    """)
    res = registry_in_subprocess(tmp_path)
    plugins = {p[0]: p for p in res["plugins"]}
    assert "has no attrs `Config`" in plugins["noconf"][2]
    assert "'CfgNode' must be a dotted" in plugins["badpickle"][2]


def test_autoload_can_be_disabled(tmp_path):
    make_plugin(tmp_path, "mimkit-checker", "checker", "mimkit_checker", GOOD)
    res = registry_in_subprocess(tmp_path, {"MIMKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert [p[0] for p in res["plugins"]] == ["mimkit (builtin)"]
    assert "checker" not in res["maskers"]


def test_mim_plugins_lists_versions_and_components():
    out = subprocess.run([sys.executable, "-m", "mimkit.cli", "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "mimkit (builtin)" in out.stdout and "maskers: random" in out.stdout
    if "mae" in {p.name for p in build_registry().plugins}:
        assert "decoders: mae" in out.stdout


def test_a_plugin_protocol_runs_through_mim_eval_with_flags_from_its_config(tmp_path):
    make_plugin(tmp_path, "mimkit-count", "count", "mimkit_count", """
        import attrs
        from mimkit.plugin_api import hookimpl, one_of
        MIMKIT_API = 2

        class CountFiles:
            '''Count the files of each source (a stand-in for a real protocol).'''
            @attrs.define(kw_only=True)
            class Config:
                scale: float = 1.0
                mode: str = attrs.field(default="files", validator=one_of("files", "dirs"))
                verbose: bool = False

            def __init__(self, config):
                self.config = config

            def __call__(self, sources):
                n = sum(len(list(__import__("pathlib").Path(s).iterdir())) for s in sources)
                return {"protocol": "count", "value": n * self.config.scale, "mode": self.config.mode,
                        "verbose": self.config.verbose, "summary": f"count: {n * self.config.scale}"}

        @hookimpl
        def mimkit_protocols():
            return {"count": CountFiles}
    """)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}").write_text("x")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "mimkit.cli", *a], capture_output=True, text=True,
                                    env=env, timeout=120, cwd=tmp_path)
    out = run("eval", "count", str(data), "--scale", "2.5", "--verbose", "--out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "count: 7.5" in out.stdout
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["value"] == 7.5 and rec["verbose"] is True and rec["mode"] == "files"
    bad = run("analyze", "count", str(data), "--mode", "both")
    assert bad.returncode == 2 and "analyze count.mode" in bad.stderr and "['files', 'dirs']" in bad.stderr
    unknown = run("eval", "nosuch", str(data))
    assert unknown.returncode == 2 and "unknown protocol 'nosuch'" in unknown.stderr and "count (count)" in unknown.stderr
