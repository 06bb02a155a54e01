"""A test kit for plugin authors: the checks every component and every preset should pass.

Use it from a plugin's tests instead of copying a training loop::

    from mimkit.testing import check_component, check_preset_trains

    def test_decoder_contract():
        check_component("my_tiny_preset", "model.decoder")

    def test_tiny_preset_trains(tmp_path):
        check_preset_trains("my_tiny_preset", tmp_path)

Each check raises ``AssertionError`` naming what failed; each returns what it built, so a test
can go on and check the numbers that matter for its method.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch
from torch import nn

from .api import build
from .checkpoint import latest, load_tensors
from .config import deep_merge, resolve
from .plugins import registry as get_registry
from .schema import unstructure
from .errors import ConfigError

#: Overrides that make any preset's training tiny: few images, no pictures, no progress bar.
TINY_TRAIN: dict[str, Any] = {"visualize": False, "progress": False, "log_every": 1, "knn_every": None}


def _at(obj: Any, path: str) -> Any:
    for part in path.split(".")[1:]:  # "model.decoder" -> model.decoder
        obj = obj[part] if isinstance(obj, nn.ModuleDict) else getattr(obj, part)
    return obj


def _nested(path: str, leaf: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(leaf)
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def _recipe(preset: str | Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    base = {"method": preset} if isinstance(preset, str) else copy.deepcopy(dict(preset))
    return deep_merge(base, extra or {})


def check_component(preset: str | Mapping[str, Any], path: str, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The component at ``path`` (e.g. ``"model.decoder"``) of a preset honours the contract:

    - its config refuses an unknown key with a :class:`ConfigError` naming ``path.key``;
    - it builds from the preset (with ``overrides`` deep-merged) and is an ``nn.Module``;
    - it moves to float64 and back (every floating parameter and buffer follows);
    - its state dict round-trips: a second, differently seeded build loads it and then holds
      identical tensors.
    """
    recipe = _recipe(preset, overrides)
    bad = deep_merge(recipe, _nested(path, {"no_such_option_xyz": 1}))
    try:
        build(bad)
    except ConfigError as exc:
        assert f"{path}.no_such_option_xyz" in str(exc), f"the error does not name the key: {exc}"
    else:
        raise AssertionError(f"{path}: an unknown config key was accepted")

    torch.manual_seed(0)
    model = build(recipe)
    comp = _at(model, path)
    assert isinstance(comp, nn.Module), f"{path} is {type(comp).__name__}, not an nn.Module"

    comp.to(torch.float64)
    for name, t in [*comp.named_parameters(), *comp.named_buffers()]:
        if t.is_floating_point():
            assert t.dtype == torch.float64, f"{path}.{name} did not move to float64"
    comp.to(torch.float32)

    torch.manual_seed(1)
    other = _at(build(recipe), path)
    state = {k: v.clone() for k, v in comp.state_dict().items()}
    other.load_state_dict(state, strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k]), f"{path}: {k} differs after load_state_dict"
    return comp


def _shrink_data(spec: Any, limit: int, registry: Any) -> Any:
    """A data spec with ``limit`` set on every dataset (nested ones too) that has the option."""
    if not isinstance(spec, Mapping) or spec.get("name") not in registry.components["datasets"]:
        return spec
    out = {k: _shrink_data(v, limit, registry) for k, v in spec.items()}
    fields = attrs.fields_dict(registry.get("datasets", spec["name"]).Config)
    if "limit" in fields:
        out["limit"] = limit
    return out


def tiny_overrides(preset: str | Mapping[str, Any], limit: int = 96, batch_size: int = 16) -> dict[str, Any]:
    """Overrides that make a preset's data tiny (``limit`` items wherever a dataset has the
    option) and its batch small, for a test that trains a few steps."""
    reg = get_registry()
    raw = unstructure(resolve(_recipe(preset)))
    out: dict[str, Any] = {"data": _shrink_data(raw["data"], limit, reg),
                           "train": {"batch_size": min(batch_size, raw["train"]["batch_size"]), "num_workers": 0}}
    if raw.get("eval_data"):
        out["eval_data"] = _shrink_data(raw["eval_data"], 16, reg)
    return out


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def check_preset_trains(
    preset: str | Mapping[str, Any],
    tmp_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    steps: int = 6,
    expect_fall: bool = True,
    check_resume: bool = True,
) -> Path:
    """A few optimizer steps of a (tiny) preset train, stay finite, lower the loss, and resume
    exactly.

    Runs ``steps`` steps with a checkpoint halfway; then copies that halfway checkpoint into a
    second run folder and resumes it to the end: the final weights must be bitwise equal to the
    uninterrupted run's. ``overrides`` (deep-merged) should make the data tiny
    (``{"data": {"limit": 256}}``) and the model small. Returns the run folder.
    """
    if steps < 2 or steps % 2:
        raise ValueError("steps must be an even number >= 2 (a checkpoint is taken halfway)")
    tmp = Path(tmp_path)
    recipe = _recipe(preset, overrides)
    recipe = deep_merge(recipe, {"output_dir": str(tmp), "name": "kit_full",
                                 "train": TINY_TRAIN | {"max_steps": steps, "ckpt_every": steps // 2,
                                                        "keep_last": 2}})
    recipe["train"].setdefault("epochs", 1000)  # max_steps decides the length
    from .trainer import train  # late: the trainer pulls in Accelerate

    full = train(recipe)
    rows = [r for r in _rows(full) if "loss" in r]
    assert rows and rows[-1]["step"] == steps, f"expected {steps} logged steps, got {[r['step'] for r in rows]}"
    for r in rows:
        bad = {k: v for k, v in r.items() if k.startswith("loss") and not (isinstance(v, float) and abs(v) < float("inf"))}
        assert not bad, f"non-finite loss terms at step {r['step']}: {bad}"
    if expect_fall:
        first, last = rows[0]["loss"], rows[-1]["loss"]
        assert last < first, f"the loss did not fall in {steps} steps: {first:.5f} -> {last:.5f}"
    if not check_resume:
        return full

    half = full / "checkpoints" / f"step_{steps // 2}"
    assert half.is_dir(), f"no halfway checkpoint at {half}"
    resumed_dir = tmp / "kit_resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(half, resumed_dir / "checkpoints" / half.name)
    resumed = train(deep_merge(recipe, {"name": "kit_resumed"}), resume=True)
    a = load_tensors(latest(full / "checkpoints") / "model.safetensors")
    b = load_tensors(latest(resumed / "checkpoints") / "model.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resuming from step {steps // 2} is not exact: {len(diff)} tensors differ, e.g. {diff[:3]}"
    return full
