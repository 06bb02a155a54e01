"""A test kit for plugin authors: the checks every component and every preset should pass.

Use it from a plugin's tests instead of copying a training loop::

    from mimkit.testing import check_component, check_preset_trains

    def test_decoder_contract():
        check_component("my_tiny_preset", "model.decoder")

    def test_tiny_preset_trains(tmp_path):
        check_preset_trains("my_tiny_preset", tmp_path)

Each check raises ``AssertionError`` naming what failed; each returns what it built, so a test
can go on and check the numbers that matter for its method (:func:`read_metrics` reads a run's
logged rows). A method whose total loss is noisy or not monotone early names the terms that
must fall and averages them (``expect_fall=["loss/patch"], window=3``); one that should learn
fast asks for a real fall (``min_drop=0.2``).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

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


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The training rows of a run's ``metrics.jsonl`` (those with a ``loss``), in step order."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in (json.loads(x) for x in lines if x.strip()) if "loss" in r]


def check_falls(rows: list[dict[str, Any]], keys: Sequence[str] = ("loss",), window: int = 1,
                min_drop: float = 0.0) -> None:
    """Each logged term in ``keys`` falls: the mean of its last ``window`` values is below
    ``(1 - min_drop)`` times the mean of its first ``window`` values.

    ``window`` > 1 compares averages, for terms that are noisy from batch to batch (contrastive
    and self-distillation terms); ``min_drop`` asks for a real fall (0.2: by a fifth at least),
    not just any."""
    if window < 1 or 2 * window > len(rows):
        raise ValueError(f"window {window}: need 1 <= window <= {len(rows) // 2} for {len(rows)} logged steps")
    for key in keys:
        missing = [r["step"] for r in rows if key not in r]
        assert not missing, f"{key!r} is not logged at steps {missing[:5]}; logged: {sorted(rows[0])}"
        first = sum(r[key] for r in rows[:window]) / window
        last = sum(r[key] for r in rows[-window:]) / window
        assert last < (1 - min_drop) * first, (
            f"{key} did not fall by {min_drop:.0%} in {len(rows)} steps (mean of {window} first / last): "
            f"{first:.5f} -> {last:.5f}")


def reference_vit_block(x: torch.Tensor, sd: Mapping[str, torch.Tensor], prefix: str, heads: int,
                        eps: float = 1e-6) -> torch.Tensor:
    """One pre-norm ViT block written out in plain torch from timm/DeiT key names (``norm1``,
    ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1/fc2`` under ``prefix``): the reference that
    official-checkpoint parity tests compare an imported model with. x: (B, T, D) -> (B, T, D)."""
    import torch.nn.functional as F

    b, n, d = x.shape
    h = F.layer_norm(x, (d,), sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], eps=eps)
    qkv = F.linear(h, sd[prefix + "attn.qkv.weight"], sd[prefix + "attn.qkv.bias"]).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, D / heads)
    attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), sd[prefix + "attn.proj.weight"], sd[prefix + "attn.proj.bias"])
    h = F.layer_norm(x, (d,), sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], eps=eps)
    h = F.linear(F.gelu(F.linear(h, sd[prefix + "mlp.fc1.weight"], sd[prefix + "mlp.fc1.bias"])),
                 sd[prefix + "mlp.fc2.weight"], sd[prefix + "mlp.fc2.bias"])
    return x + h


def one_thread() -> Iterator[None]:
    """One intra-op torch thread while a test module runs, restored afterwards; wrap it as an autouse
    module fixture: ``one_thread = pytest.fixture(autouse=True, scope="module")(mimkit.testing.one_thread)``.
    Tiny models run faster on one thread of a shared 2-core machine, and changing the count for the
    whole process instead would make later in-process runs differ bitwise from subprocess runs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def check_preset_trains(
    preset: str | Mapping[str, Any],
    tmp_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    steps: int = 6,
    expect_fall: bool | Sequence[str] = True,
    check_resume: bool = True,
    window: int = 1,
    min_drop: float = 0.0,
) -> Path:
    """A few optimizer steps of a (tiny) preset train, stay finite, lower the loss, and resume
    exactly.

    Runs ``steps`` steps with a checkpoint halfway; then copies that halfway checkpoint into a
    second run folder and resumes it to the end: the final weights must be bitwise equal to the
    uninterrupted run's. ``overrides`` (deep-merged) should make the data tiny
    (``{"data": {"limit": 256}}``) and the model small. Returns the run folder
    (:func:`read_metrics` reads its logged rows).

    ``expect_fall``: ``True`` checks the total ``loss``; a list names the logged terms that must
    fall instead (``["loss/patch"]``: a self-distillation method's total need not fall early);
    ``False`` checks none. ``window`` and ``min_drop`` are those of :func:`check_falls`.
    """
    if steps < 2 or steps % 2:
        raise ValueError("steps must be an even number >= 2 (a checkpoint is taken halfway)")
    if expect_fall and not 1 <= window <= steps // 2:
        raise ValueError(f"window {window}: need 1 <= window <= steps // 2 = {steps // 2}")
    tmp = Path(tmp_path)
    recipe = _recipe(preset, overrides)
    recipe = deep_merge(recipe, {"output_dir": str(tmp), "name": "kit_full",
                                 "train": TINY_TRAIN | {"max_steps": steps, "ckpt_every": steps // 2,
                                                        "keep_last": 2}})
    recipe["train"].setdefault("epochs", 1000)  # max_steps decides the length
    from .trainer import train  # late: the trainer pulls in Accelerate

    full = train(recipe)
    rows = read_metrics(full)
    assert rows and rows[-1]["step"] == steps, f"expected {steps} logged steps, got {[r['step'] for r in rows]}"
    for r in rows:
        bad = {k: v for k, v in r.items() if k.startswith("loss") and not (isinstance(v, float) and abs(v) < float("inf"))}
        assert not bad, f"non-finite loss terms at step {r['step']}: {bad}"
    if expect_fall:
        check_falls(rows, ("loss",) if expect_fall is True else list(expect_fall), window, min_drop)
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
