"""The two cosines of ``optim.schedule`` against closed formulas and timm's own scheduler."""
from __future__ import annotations

import math

import pytest
import torch

from mimkit.config import OptimConfig, resolve
from mimkit.errors import ConfigError
from mimkit.schedules import lr_at


def _timm_lrs(peak: float, warm: int, total: int, warm_lr: float, min_lr: float, steps: list[int]) -> list[float]:
    from timm.scheduler.cosine_lr import CosineLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=min_lr, warmup_lr_init=warm_lr, warmup_t=warm,
                              warmup_prefix=False, cycle_limit=1, t_in_epochs=False)
    out = []
    for t in steps:
        sched.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("warm,total", [(20, 200), (0, 50), (7, 7 * 13 + 3)])
def test_timm_cosine_equals_timm(warm: int, total: int) -> None:
    cfg = OptimConfig(schedule="timm_cosine", warmup_start_lr=5e-7, min_lr=5e-6)
    steps = sorted({0, 1, max(0, warm - 1), warm, warm + 1, total // 2, total - 1, total, total + 5})
    ref = _timm_lrs(1e-3, warm, total, 5e-7, 5e-6, steps)
    for t, r in zip(steps, ref):
        assert lr_at(t, 1e-3, cfg, warm, total) == pytest.approx(r, rel=1e-12, abs=1e-15), t


def test_the_two_cosines_closed_formulas() -> None:
    peak, lo, start, warm, total = 1e-3, 1e-5, 1e-6, 10, 110
    timm = OptimConfig(schedule="timm_cosine", min_lr=lo, warmup_start_lr=start)
    plain = OptimConfig(min_lr=lo, warmup_start_lr=start)
    assert plain.schedule == "cosine"
    for t in (0, 3, 9):  # the same linear warm-up
        w = start + (peak - start) * t / warm
        assert lr_at(t, peak, timm, warm, total) == pytest.approx(w) == lr_at(t, peak, plain, warm, total)
    for t in (10, 40, 60, 109):
        assert lr_at(t, peak, timm, warm, total) == pytest.approx(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * t / total)))
        assert lr_at(t, peak, plain, warm, total) == pytest.approx(
            lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))))
    # the warm-up counted inside the cosine: below the peak right after it, the same end
    assert lr_at(warm, peak, timm, warm, total) == pytest.approx(lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi / 11)))
    assert lr_at(warm, peak, plain, warm, total) == pytest.approx(peak)
    assert lr_at(total, peak, timm, warm, total) == pytest.approx(lo) == lr_at(total, peak, plain, warm, total)


def test_schedule_is_validated() -> None:
    with pytest.raises(ConfigError, match="optim.schedule.*cosine.*timm_cosine"):
        resolve({"method": "mae_tiny_fashion_mnist", "optim": {"schedule": "timm"}})


def test_the_trainer_runs_the_chosen_schedule(tmp_path) -> None:
    """The lr the trainer logs after step s (the lr of the next step) is lr_at(s) of the
    timm cosine: 16 samples, batch 8 -> 2 steps per epoch, 3 epochs, 1 warm-up epoch."""
    import json

    from mimkit.config import deep_merge
    from mimkit.testing import tiny_overrides
    from mimkit.trainer import train

    recipe = deep_merge({"method": "mae_tiny_fashion_mnist"}, tiny_overrides("mae_tiny_fashion_mnist", limit=16))
    recipe = deep_merge(recipe, {
        "optim": {"schedule": "timm_cosine", "warmup_epochs": 1, "lr": 1e-3, "min_lr": 1e-4, "warmup_start_lr": 0.0},
        "train": {"epochs": 3, "batch_size": 8, "log_every": 1, "ckpt_every": 100, "mixed_precision": "no"},
        "model": {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "decoder": {"embed_dim": 16, "depth": 1}},
        "output_dir": str(tmp_path), "name": "run"})
    run = train(recipe)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6], rows
    cfg = OptimConfig(schedule="timm_cosine", min_lr=1e-4)
    for step, lr in lrs.items():
        assert lr == pytest.approx(lr_at(step, 1e-3, cfg, 2, 6), rel=1e-9), (step, lr)
    assert lrs[2] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 6)))  # inside the cosine


def test_min_and_warmup_lrs_scale_with_the_batch_when_asked() -> None:
    """MFM's main_mfm.py scales lr, warm-up lr and min lr by batch / 512 alike."""
    cfg = OptimConfig(base_lr=3e-4, ref_batch=512, warmup_start_lr=2.5e-7, min_lr=2.5e-6, scale_min_lr=True,
                      schedule="timm_cosine")
    peak = 3e-4 * 1024 / 512
    assert lr_at(0, peak, cfg, 10, 100) == pytest.approx(2.5e-7 * 2)
    assert lr_at(100, peak, cfg, 10, 100) == pytest.approx(2.5e-6 * 2)
    absolute = OptimConfig(base_lr=3e-4, ref_batch=512, warmup_start_lr=2.5e-7, min_lr=2.5e-6)
    assert lr_at(0, peak, absolute, 10, 100) == pytest.approx(2.5e-7)
    # an absolute optim.lr has no batch scaling to follow
    fixed = OptimConfig(lr=1e-3, warmup_start_lr=1e-6, min_lr=1e-5, scale_min_lr=True)
    assert lr_at(0, 1e-3, fixed, 10, 100) == pytest.approx(1e-6)
