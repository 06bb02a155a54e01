"""The trainer's optimizer groups: the model's own ``param_groups(weight_decay)`` when it defines
one (a method's weight-decay exemptions by name), else the generic MAE rule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mimkit.config import OptimConfig
from mimkit.errors import ConfigError
from mimkit.schedules import wd_at
from mimkit.optim import make_optimizer, param_groups


class _Toy(nn.Module):
    """Decays its LayerNorm weight (the generic rule would not) and exempts ``proj.weight``."""

    def __init__(self, leave_out: bool = False):
        super().__init__()
        self.proj, self.norm, self.head = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)
        self.leave_out = leave_out

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [self.norm.weight, self.head.weight]
        exempt = [self.proj.weight, self.proj.bias, self.norm.bias] + ([] if self.leave_out else [self.head.bias])
        return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def _names(model: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_the_models_groups_are_the_optimizers() -> None:
    m = _Toy()
    cfg = OptimConfig(weight_decay=0.07, weight_decay_end=0.3, impl="forloop")
    opt = make_optimizer(m, cfg, lr=1e-3)
    got = [(_names(m, g["params"]), g["weight_decay"], g["apply_wd"]) for g in opt.param_groups]
    assert got == [({"norm.weight", "head.weight"}, 0.07, True),
                   ({"proj.weight", "proj.bias", "norm.bias", "head.bias"}, 0.0, False)]
    # the generic rule would have exempted the LayerNorm weight and decayed proj.weight
    generic = param_groups(m, 0.07)
    assert "norm.weight" in _names(m, generic[1]["params"]) and "proj.weight" in _names(m, generic[0]["params"])
    # the weight-decay schedule reaches the decayed group only (what the trainer's set_schedule does)
    wd = wd_at(50, cfg, 100)
    for g in opt.param_groups:
        if g["apply_wd"]:
            g["weight_decay"] = wd
    assert [g["weight_decay"] for g in opt.param_groups] == [pytest.approx(0.07 + (0.3 - 0.07) * 0.5), 0.0]


def test_a_parameter_left_out_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"param_groups.*in none: \['head.bias'\]"):
        make_optimizer(_Toy(leave_out=True), OptimConfig(), lr=1e-3)


def test_without_param_groups_the_generic_rule() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = make_optimizer(m, OptimConfig(weight_decay=0.05, impl="forloop"), lr=1e-3)
    assert [_names(m, g["params"]) for g in opt.param_groups] == [{"0.weight"}, {"0.bias", "1.weight", "1.bias"}]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
