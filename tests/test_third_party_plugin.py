"""A third-party plugin installed into a throwaway venv is found by `mim plugins` and usable
from a recipe (examples/third_party_plugin, distribution mimkit-checker)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "third_party_plugin"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_third_party_plugin_installs_and_builds(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], timeout=120).check_returncode()
    py = venv / "bin" / "python"
    # --system-site-packages exposes the *base* interpreter's packages, not those of the venv
    # running this test (mimkit, torch, pip, setuptools): chain to them with a .pth file, and
    # skip ensurepip's old setuptools that would shadow the modern one.
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60).stdout.strip()
    parents = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    # an "import" line runs site.addsitedir, so the parent's own .pth files (editable installs) apply too
    Path(site, "_parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    pip = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(PLUGIN)], timeout=240)
    if pip.returncode != 0:
        pytest.fail(f"pip install failed:\n{pip.stdout}\n{pip.stderr}")
    listing = _run([str(py), "-m", "mimkit.cli", "plugins"], timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "checker" in listing.stdout and "[ok]" in listing.stdout.split("checker", 1)[1].splitlines()[0]
    script = textwrap.dedent(
        """
        import torch, mimkit
        m = mimkit.build({"method": "mae_tiny_fashion_mnist", "model": {"masker": {"name": "checker"}}})
        assert type(m.masker).__module__.startswith("mimkit_checker")
        out = m({"image": torch.randn(2, 1, 32, 32)})
        assert out.mask.hidden.sum(1).tolist() == [32, 32], out.mask.hidden.sum(1)
        assert torch.isfinite(out.loss)
        print("ok")
        """
    )
    run = _run([str(py), "-c", script], timeout=180)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
    own = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")], timeout=180)
    assert own.returncode == 0, own.stdout + own.stderr
    # the README's command: a preset by name (dry run: resolved, validated, built on the meta device)
    dry = _run([str(py), "-m", "mimkit.cli", "train", "checker_tiny", "--set", "train.max_steps=20", "--dry-run"],
               timeout=180)
    assert dry.returncode == 0, dry.stderr
    assert "name: checker_tiny" in dry.stdout and "# parameters:" in dry.stdout
