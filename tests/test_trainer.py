"""The trainer: exact resume, preemption, non-finite losses, two processes."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mimkit
from mimkit.trainer import NonFiniteLoss, lr_at
from mimkit.config import OptimConfig

from conftest import MIM, tiny_recipe

pytest.importorskip("mimkit_mae")


def weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model.safetensors"))


def optim_state(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step_{step}" / "optimizer.pt", weights_only=True)


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_identical(tmp_path):
    straight = mimkit.train(tiny_recipe(tmp_path, "straight"))
    assert json.loads((straight / "result.json").read_text())["step"] == 16  # 2 epochs x 256 / 32
    pieces = mimkit.train(tiny_recipe(tmp_path, "pieces", ckpt_every=4, keep_last=10))
    for kill_at in (12, 8, 4):  # mid-epoch, epoch boundary, early
        for p in (pieces / "checkpoints").iterdir():
            if int(p.name.split("_")[1]) > kill_at:
                shutil.rmtree(p)
        mimkit.train(tiny_recipe(tmp_path, "pieces", ckpt_every=4, keep_last=10), resume=True)
        assert_bitwise(weights(straight, 16), weights(pieces, 16))
        sa, sb = optim_state(straight, 16), optim_state(pieces, 16)
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(sa["state"][i][k], sb["state"][i][k])
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    for f in ("recipe.yaml", "meta.json", "metrics.jsonl"):
        assert (straight / f).is_file()
    assert any((straight / "tensorboard").rglob("events.out.tfevents*"))
    meta = json.loads((straight / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and "mae" in meta["versions"]


def test_refuses_to_overwrite_a_run_without_flag(tmp_path):
    mimkit.train(tiny_recipe(tmp_path, "once", epochs=0.25))
    with pytest.raises(mimkit.MimkitError, match="--resume"):
        mimkit.train(tiny_recipe(tmp_path, "once", epochs=0.25))


def test_nonfinite_loss_stops_naming_step_and_terms_keeping_last_checkpoint(tmp_path, monkeypatch):
    from mimkit.components.losses import MaskedMSE

    calls = {"n": 0}
    original = MaskedMSE.forward

    def poisoned(self, outputs, batch, ctx=None):
        calls["n"] += 1
        value = original(self, outputs, batch, ctx)
        return value * float("nan") if calls["n"] > 5 else value

    monkeypatch.setattr(MaskedMSE, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 6 .*loss/rec=nan"):
        mimkit.train(tiny_recipe(tmp_path, "nan", ckpt_every=4, log_every=2))
    good = weights(tmp_path / "nan", 4)
    assert all(torch.isfinite(v).all() for v in good.values())
    assert not (tmp_path / "nan" / "checkpoints" / "step_6").exists()

    calls["n"] = 0
    run = mimkit.train(tiny_recipe(tmp_path, "skip", nonfinite="skip", epochs=1))
    result = json.loads((run / "result.json").read_text())
    assert result["skipped_steps"] == 3 and result["status"] == "finished"  # steps 6, 7, 8 skipped
    assert all(torch.isfinite(v).all() for v in weights(run, 8).values())


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(warmup_start_lr=0.0, min_lr=1e-5)
    assert lr_at(0, 1e-3, cfg, 10, 110) == 0.0
    assert lr_at(5, 1e-3, cfg, 10, 110) == pytest.approx(5e-4)
    assert lr_at(10, 1e-3, cfg, 10, 110) == pytest.approx(1e-3)
    assert lr_at(60, 1e-3, cfg, 10, 110) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(110, 1e-3, cfg, 10, 110) == pytest.approx(1e-5)


def _write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sigterm_saves_and_resume_continues_exactly(tmp_path, subprocess_env):
    recipe = tiny_recipe(tmp_path, "term", epochs=4, ckpt_every=1000)
    f = _write_recipe(tmp_path / "term.yaml", recipe)
    proc = subprocess.Popen([*MIM, "train", str(f)], env=subprocess_env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads((tmp_path / "term" / "result.json").read_text())
    assert result["status"] == "preempted" and 4 <= result["step"] < 32
    assert "--resume" in err
    out = subprocess.run([*MIM, "train", str(f), "--resume"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    straight = mimkit.train(tiny_recipe(tmp_path, "term_straight", epochs=4, ckpt_every=1000))
    assert_bitwise(weights(straight, 32), weights(tmp_path / "term", 32))


def test_two_processes_match_one(tmp_path, subprocess_env):
    one = mimkit.train(tiny_recipe(tmp_path, "one", epochs=1))
    recipe = tiny_recipe(tmp_path, "two", epochs=1, batch_size=16)  # same global batch of 32
    f = _write_recipe(tmp_path / "two.yaml", recipe)
    accelerate = Path(sys.executable).parent / "accelerate"
    out = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mimkit.cli", "train", str(f)],
                         env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    assert (two / "checkpoints" / "step_8" / "rng_rank1.safetensors").is_file()  # rank 1 really ran
    l1 = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(x)["loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 4
    assert l1 == pytest.approx(l2, rel=1e-4)  # same samples, masks and global batch


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    big = mimkit.train(tiny_recipe(tmp_path, "big", epochs=1))
    acc = mimkit.train(tiny_recipe(tmp_path, "acc", epochs=1, batch_size=16, grad_accum=2))
    lb = [json.loads(x)["loss"] for x in (big / "metrics.jsonl").read_text().splitlines()]
    la = [json.loads(x)["loss"] for x in (acc / "metrics.jsonl").read_text().splitlines()]
    assert len(lb) == len(la) == 4 and lb == pytest.approx(la, rel=1e-4)
    wb, wa = weights(big, 8), weights(acc, 8)
    assert max((wb[k] - wa[k]).abs().max().item() for k in wb) < 1e-4


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    fp32 = mimkit.train(tiny_recipe(tmp_path, "fp32", epochs=1))
    bf16 = mimkit.train(tiny_recipe(tmp_path, "bf16", epochs=1, mixed_precision="bf16"))
    l32 = [json.loads(x)["loss"] for x in (fp32 / "metrics.jsonl").read_text().splitlines()]
    l16 = [json.loads(x)["loss"] for x in (bf16 / "metrics.jsonl").read_text().splitlines()]
    assert l16[-1] < l16[0] and l16 == pytest.approx(l32, rel=0.03)


def test_online_knn_is_logged_and_plotted(tmp_path, capsys):
    run = mimkit.train(tiny_recipe(tmp_path, "knn", epochs=1, knn_every=4, knn_train=128, knn_test=8, visualize=True))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    knn = [r["knn_top1"] for r in rows if "knn_top1" in r]
    assert len(knn) == 2 and all(0.0 <= v <= 1.0 for v in knn)
    assert f"online k-NN top-1 at step 8: {knn[-1]:.1%} (8 held-out images" in capsys.readouterr().out
    assert (run / "loss_curve.png").stat().st_size > 1000 and (run / "reconstructions.png").is_file()


def test_overwrite_with_a_typo_leaves_the_old_run_untouched(tmp_path):
    """`mim train r.yaml --overwrite --set model.masker.ratoi=0.9` must fail before deleting anything."""
    import yaml

    run = mimkit.train(tiny_recipe(tmp_path, "keep", epochs=0.25))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert (run / "metrics.jsonl").is_file()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, "keep", epochs=0.25)))
    bad = "model.masker.ratoi=0.9"  # the command line: one typo (each call starts a Python)
    out = subprocess.run([*MIM, "train", str(recipe), "--overwrite", "--set", bad], capture_output=True, text=True)
    assert out.returncode == 2 and bad.split("=")[0] in out.stderr, out.stderr
    for bad in ("model.masker.ratoi=0.9", "model.decoder.depht=2", "data.rooot=/nowhere"):
        with pytest.raises(mimkit.ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            mimkit.train(str(recipe), overrides=[bad], overwrite=True)
    # a recipe that validates but cannot build (a data folder that does not exist) fails before rmtree too
    with pytest.raises(mimkit.MimkitError):
        mimkit.train(str(recipe), overrides=["data.root=/nowhere/at/all"], overwrite=True)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_dry_run_prints_the_validated_recipe_and_writes_nothing(tmp_path):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "out", "dry")))
    out = subprocess.run([*MIM, "train", str(recipe), "--dry-run", "--set", "model.masker.ratio=0.5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["masker"]["ratio"] == 0.5 and printed["name"] == "dry"
    expected = sum(p.numel() for p in mimkit.build(tiny_recipe(tmp_path, "dry")).parameters())
    assert f"# parameters: {expected:,}" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # no run folder, nothing else
    bad = subprocess.run([*MIM, "train", str(recipe), "--dry-run", "--set", "model.masker.ratoi=0.5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "model.masker.ratoi" in bad.stderr


def test_plan_is_the_run_arithmetic():
    from mimkit.config import TrainConfig
    from mimkit.trainer import Plan

    tc = TrainConfig(epochs=2.5, batch_size=32, grad_accum=2)
    oc = OptimConfig(base_lr=1.5e-4, warmup_epochs=0.5)
    p = Plan.make(1000, tc, oc, world=2)
    # 1000 // 64 = 15 micro-batches -> 14 (multiple of 2 accumulation) -> 7 steps per epoch
    assert (p.global_batch, p.micro_per_epoch, p.steps_per_epoch) == (64, 14, 7)
    assert p.total_steps == round(2.5 * 7) and p.effective_batch == 128
    assert p.peak_lr == pytest.approx(1.5e-4 * 128 / 256) and p.warmup_steps == round(0.5 * 7)
    assert Plan.make(1000, TrainConfig(epochs=10, batch_size=32, max_steps=5), oc).total_steps == 5
    assert Plan.make(1000, TrainConfig(batch_size=32), OptimConfig(lr=0.1)).peak_lr == 0.1
    with pytest.raises(mimkit.MimkitError, match="lower train.batch_size"):
        Plan.make(10, TrainConfig(batch_size=32), oc)


def test_one_schedule_for_pretraining_and_evaluation():
    from mimkit import evaluate, schedules

    cfg = OptimConfig(min_lr=0.0, warmup_start_lr=0.0)
    for step in (0, 3, 10, 50, 110, 200):
        assert schedules.lr_at(step, 1e-3, cfg, 10, 110) == evaluate.cosine_lr(step, 1e-3, 10, 110)
    wd = OptimConfig(weight_decay=0.04, weight_decay_end=0.4)
    assert schedules.wd_at(0, wd, 100) == pytest.approx(0.04)
    assert schedules.wd_at(50, wd, 100) == pytest.approx(0.22)
    assert schedules.wd_at(100, wd, 100) == pytest.approx(0.4)


def test_resume_is_exact_with_drop_path(tmp_path):
    """Creating a data loader must not draw from the global RNG that drop path uses: otherwise a
    resumed run draws it at another point than the uninterrupted one and the weights diverge."""
    from mimkit.config import deep_merge
    from mimkit.testing import check_preset_trains, tiny_overrides

    over = deep_merge(tiny_overrides("mae_tiny_fashion_mnist"), {"model": {"encoder": {"drop_path": 0.1, "depth": 2}}})
    check_preset_trains("mae_tiny_fashion_mnist", tmp_path, over, steps=4, expect_fall=False)
