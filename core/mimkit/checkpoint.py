"""Checkpoints that are never half-written and load without running code.

Layout: ``<run>/checkpoints/step_<N>/`` holding ``model.safetensors``, ``optimizer.pt``
(tensors only, loaded with ``weights_only=True``) -- under FSDP instead ``sharded/``, the model and
optimizer shards of every process (:mod:`mimkit.distributed`) --, ``rng_rank<r>.safetensors``,
``state.json`` (counters, versions, format) and ``recipe.yaml``; written into a temporary
folder with a ``COMPLETE`` marker, fsynced, then renamed in one step. Old ones are pruned only afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
_STEP = re.compile(r"^step_(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def state_dict_for_save(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tensors shared between keys are stored once per key."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(ckpt_dir: Path) -> Path | None:
    found = complete_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def write(
    ckpt_dir: Path,
    step: int,
    files: dict[str, Any],
    keep_last: int,
    staged: Path | None = None,
) -> Path:
    """Write one checkpoint atomically. ``files`` maps a file name to a state:
    ``*.safetensors`` -> dict of tensors, ``*.pt`` -> tensor-only object, ``*.json`` -> JSON,
    other -> text. ``staged``: a :func:`staging` folder that other processes already filled (the
    shards of an FSDP checkpoint); it is completed and renamed like a fresh one."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step}"
    tmp = staged if staged is not None else staging(ckpt_dir, step, os.getpid(), fresh=True)
    name = COMPLETE
    try:
        for name, obj in files.items():
            target = tmp / name
            if name.endswith(".safetensors"):
                save_file(obj, str(target))
            elif name.endswith(".pt"):
                torch.save(obj, target)
            elif name.endswith(".json"):
                target.write_text(json.dumps(obj, indent=1, sort_keys=True))
            else:
                target.write_text(obj)
        name = COMPLETE
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
    except BaseException as exc:  # disk full, quota, I/O error, Ctrl-C: no partial folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, OSError):
            # torch.save reports ENOSPC as RuntimeError("[enforce fail at inline_container.cc ...]"),
            # safetensors as SafetensorError: one OSError for the caller, naming the file
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(f"writing {name} failed: {detail}") from None
        raise
    if final.exists():  # a re-save of the same step (e.g. final == periodic)
        shutil.rmtree(final)
    os.replace(tmp, final)  # the single commit point
    _fsync_dir(ckpt_dir)
    prune(ckpt_dir, keep_last)
    return final


def staging(ckpt_dir: Path, step: int, pid: int, fresh: bool = False) -> Path:
    """The temporary folder a checkpoint is written into before its rename (``pid``: the writing
    main process, whose :func:`prune` keeps it); ``fresh`` empties and creates it."""
    tmp = ckpt_dir / f".tmp-step_{step}-{pid}"
    if fresh:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    return tmp


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` complete checkpoints (the newest is never
    removed, whatever ``keep_last`` says), and stale temp folders."""
    found = complete_checkpoints(ckpt_dir)
    for _, p in found[: max(0, len(found) - max(1, keep_last))]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".tmp-step_*"):
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"missing file {path}")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: not a complete safetensors file ({_first_line(exc)})") from None


def load_torch(path: Path, allowed: Mapping[str, Any] | None = None) -> Any:
    """``torch.load(weights_only=True)``: a pickle that would run code is refused, not run.
    ``allowed`` maps pickled class names to stand-ins (hook ``mimkit_pickled``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty (truncated)")
    try:
        # official MAE files carry their argparse Namespace: a plain attribute bag, safe to allow
        extra = [(obj, name) for name, obj in (allowed or {}).items()]
        with torch.serialization.safe_globals([argparse.Namespace, *extra]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file loadable with weights_only=True "
            f"(it may contain code, or be damaged). Details: {_first_line(exc)}"
        ) from None


def has_model(folder: Path) -> bool:
    """Whether a checkpoint folder holds model weights: ``model.safetensors`` or FSDP shards."""
    return (folder / "model.safetensors").is_file() or (folder / "sharded" / ".metadata").is_file()


def load_model_state(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(the model's state, its file) of a checkpoint folder: ``model.safetensors``, or the FSDP
    shards of ``sharded/`` consolidated in this process."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file() and (folder / "sharded").is_dir():
        from .distributed import read_sharded_model

        return read_sharded_model(folder / "sharded"), str(folder / "sharded")
    return load_tensors(folder / "model.safetensors"), str(folder / "model.safetensors")


def read_hf_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"hf_config": config.json, "state": weights}`` of a Hugging Face ``save_pretrained``
    folder (safetensors, else ``pytorch_model.bin`` with ``weights_only``), for importers."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder)")
    cfg = load_json(folder / "config.json")
    if (folder / "model.safetensors").is_file():
        state = load_tensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = load_torch(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    return {"hf_config": cfg, "state": state}


def load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing file {path}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot read {path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_compatible(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:10]) + (" ..." if len(shapes) > 10 else ""))
    if strict and missing:
        problems.append("missing keys: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    if problems:
        raise CheckpointError(f"{source} does not fit this model (another architecture?): " + " | ".join(problems))


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
