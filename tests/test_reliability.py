"""Reliability promises: SIGKILL anywhere resumes exactly, checkpoints are atomic, messy
data is handled by policy, recipes are fuzzed, bad environments are caught early."""
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import mimkit
from mimkit.api import build_dataset
from mimkit.config import resolve
from mimkit.errors import ConfigError, DataError, MimkitError

from conftest import MIM, tiny_recipe
from test_trainer import _write_recipe, assert_bitwise, weights

pytest.importorskip("mimkit_mae")


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)


def test_sigkill_at_random_steps_then_resume_is_exact(tmp_path, subprocess_env):
    straight = mimkit.train(tiny_recipe(tmp_path, "straight", epochs=3, ckpt_every=3))
    f = _write_recipe(tmp_path / "k.yaml", tiny_recipe(tmp_path, "killed", epochs=3, ckpt_every=3, log_every=1))
    rng = np.random.default_rng(0)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    first = True
    for _ in range(3):
        target_lines = (len(metrics.read_text().splitlines()) if metrics.exists() else 0) + int(rng.integers(2, 6))
        proc = subprocess.Popen([*MIM, "train", str(f), *([] if first else ["--resume"])], env=subprocess_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = False
        _wait_lines(metrics, target_lines, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    out = subprocess.run([*MIM, "train", str(f), "--resume"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert_bitwise(weights(straight, 24), weights(tmp_path / "killed", 24))


KILL_IN_WRITE = """
import os, signal
import mimkit.checkpoint as ck
_orig = ck.save_file
_count = {"n": 0}
def save_file(obj, path, *a, **k):
    _count["n"] += str(path).endswith("model.safetensors")
    if _count["n"] == 2 and str(path).endswith("model.safetensors"):  # the second checkpoint: die half-way through writing it
        with open(path, "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(obj, path, *a, **k)
ck.save_file = save_file
"""


def test_kill_inside_checkpoint_write_keeps_previous_and_resume_picks_it(tmp_path, subprocess_env):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(KILL_IN_WRITE)
    f = _write_recipe(tmp_path / "w.yaml", tiny_recipe(tmp_path, "w", epochs=1, ckpt_every=3))
    env = subprocess_env | {"PYTHONPATH": str(tmp_path / "hook")}
    proc = subprocess.run([*MIM, "train", str(f)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    ckdir = tmp_path / "w" / "checkpoints"
    assert [p.name for p in ckdir.iterdir() if not p.name.startswith(".")] == ["step_3"]
    assert any(p.name.startswith(".tmp-step_6") for p in ckdir.iterdir())  # the half-written one
    assert mimkit.load(tmp_path / "w") is not None  # the previous one is complete and loadable
    out = subprocess.run([*MIM, "train", str(f), "--resume"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "resumed from" in out.stdout + out.stderr and "step_3" in out.stdout + out.stderr
    assert (ckdir / "step_8" / "COMPLETE").is_file()
    assert not any(p.name.startswith(".tmp") for p in ckdir.iterdir())  # cleaned up


def _messy_folder(root: Path) -> dict[str, str]:
    root.mkdir()
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "ok.png")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)])).save(root / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 200)).save(root / "deep16.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray(rgb).save(root / "photo.jpg")
    (root / "truncated.jpg").write_bytes((root / "photo.jpg").read_bytes()[:200])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    Image.new("L", (9000, 9000)).save(root / "huge.png")
    return {"bad": ["truncated.jpg", "empty.png", "notes.txt", "huge.png"]}


def test_messy_image_folder_error_and_skip_policies(tmp_path):
    info = _messy_folder(tmp_path / "messy")
    base = {"data": {"name": "image_folder", "root": str(tmp_path / "messy"), "img_size": 16, "max_pixels": 50_000_000}}
    ds = build_dataset(resolve(base))
    names = [p.name for p, _ in ds.samples]
    for name in ("ok.png", "gray.png", "rgba.png", "deep16.png", "palette.png", "photo.jpg"):
        item = ds[names.index(name)]
        assert item["image"].shape == (3, 16, 16) and torch.isfinite(item["image"]).all(), name
    for name in ("truncated.jpg", "empty.png", "notes.txt"):
        with pytest.raises(DataError, match=name):
            ds[names.index(name)]
    small = build_dataset(resolve(base | {"data": base["data"] | {"max_pixels": 1_000_000}}))
    with pytest.raises(DataError, match="huge.png"):
        small[names.index("huge.png")]
    skip = build_dataset(resolve(base | {"data": base["data"] | {"bad_data": "skip", "max_pixels": 1_000_000}}))
    bad = [skip[i]["_bad"] for i in range(len(skip)) if "_bad" in skip[i]]
    assert sorted(Path(b).name for b in bad) == sorted(info["bad"])


def test_skip_policy_counts_bad_files_in_a_run(tmp_path):
    _messy_folder(tmp_path / "messy")
    recipe = tiny_recipe(tmp_path, "messy", epochs=1, batch_size=5)
    recipe["data"] = {"name": "image_folder", "root": str(tmp_path / "messy"), "img_size": 32, "channels": 1,
                      "bad_data": "skip", "max_pixels": 1_000_000}
    recipe["eval_data"] = None
    run = mimkit.train(recipe)
    assert json.loads((run / "result.json").read_text())["bad_files"] == 4


def test_unwritable_run_folder_is_caught_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "r").write_text("a file where the run folder should be")
    with pytest.raises(MimkitError, match="not writable"):
        mimkit.train(tiny_recipe(locked / "r", "x"))


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(0, 5), max_size=3))
keys = st.sampled_from(["name", "seed", "train", "optim", "data", "model", "epochs", "batch_size", "lr",
                        "mixed_precision", "base_lr", "betas", "bogus", "encoder", "masker", "ratio", "method"])
recipes = st.recursive(values, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes)
def test_fuzzed_recipes_validate_or_fail_with_a_mimkit_error(raw):
    try:
        recipe = resolve(raw if isinstance(raw, dict) else {"train": raw})
        mimkit.api.build_model(recipe)
    except (ConfigError, MimkitError):
        pass


def test_full_disk_on_checkpoint_write_is_reported_and_previous_kept(tmp_path, monkeypatch):
    import errno

    import mimkit.checkpoint as ck

    original, calls = ck.save_file, {"n": 0}

    def full_disk(obj, path, *a, **k):
        calls["n"] += str(path).endswith("model.safetensors")
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(MimkitError, match=r"step 6 .*No space left.*previous checkpoint is intact: .*step_3"):
        mimkit.train(tiny_recipe(tmp_path, "full", epochs=1, ckpt_every=3))
    assert mimkit.load(tmp_path / "full") is not None
