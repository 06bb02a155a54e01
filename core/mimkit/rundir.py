"""The run folder: its lock, the checks before training writes into it, and what a resume may change.

A run folder holds one writer (``RunLock``), is never overwritten unless it is recognizably a mimkit
run, and a resumed recipe may differ from its checkpoint's only in keys that do not change what the
run computes (``MUTABLE_ON_RESUME``).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .config import Recipe, dump, yaml_load
from .errors import CheckpointError, ConfigError, MimkitError


def write_file(path: Path, text: str, mode: str = "w") -> None:
    """Write (or append) a text file of the run folder; a full disk is a one-line error."""
    try:
        with open(path, mode) as f:
            f.write(text)
    except OSError as exc:
        raise MimkitError(f"cannot write {path}: {exc}") from None


RUN_MARKERS = ("meta.json", "recipe.yaml")  # what makes a folder recognizably a mimkit run
LOCK = ".mimkit.lock"


class RunLock:
    """An exclusive lock on a run folder: ``<run>/.mimkit.lock`` holds the owner's PID and host
    and an ``flock`` on it, which the kernel releases on any exit (SIGKILL included), so a
    lock file left by a dead process is stale and simply taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        import socket

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MimkitError(f"cannot create the run lock {self.path}: {exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                finally:
                    os.close(fd)
                raise MimkitError(f"{self.path.parent} is in use by {holder}: one run folder takes one writer. "
                                  "Wait for it to finish, stop it, or pick another train name") from None
            try:  # the file may have been unlinked by the previous holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_writable(run_dir: Path) -> None:
    """Create the folder and write a 4 KiB probe: an unwritable or full disk fails here, before training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise MimkitError(f"run folder {run_dir} is not writable: {exc}") from None


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Before anything changes on disk: refuse to train over checkpoints unless resuming or
    overwriting, and let ``--overwrite`` remove only a folder that is recognizably a mimkit run."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run, "
                          "--overwrite deletes it; pass one")
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        if overwrite:
            raise MimkitError(f"--overwrite refuses to remove {run_dir}: it is not a run folder (a file or a link)")
        return  # _check_writable names the problem
    ckpt_dir = run_dir / "checkpoints"
    if ckpt.complete_checkpoints(ckpt_dir) and not (resume or overwrite):
        raise MimkitError(f"{run_dir} already holds checkpoints: pass --resume to continue or --overwrite to start over")
    if overwrite and run_dir.is_dir():
        entries = [p.name for p in run_dir.iterdir() if p.name != LOCK]
        if entries and not any((run_dir / m).is_file() for m in RUN_MARKERS):
            shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
            raise MimkitError(f"--overwrite refuses to remove {run_dir}: it holds no {' or '.join(RUN_MARKERS)}, "
                              f"so it is not a mimkit run folder (it holds: {shown}). Pick another name or "
                              "remove it yourself")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, lock: "RunLock | None" = None) -> None:
    """Check the folder (see :func:`check_run_dir`), take the lock, clear it on overwrite."""
    check_run_dir(run_dir, resume, overwrite)
    check_writable(run_dir)
    if lock is not None:
        lock.acquire()
    if overwrite:
        for p in run_dir.iterdir():
            if p.name == LOCK:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


IGNORED_ON_RESUME = ("name", "output_dir", "method")  # where the run lives, not what it computes
MUTABLE_ON_RESUME = ("train.max_steps", "train.epochs", "train.log_every", "train.ckpt_every", "train.keep_last",
                     "train.progress", "train.visualize", "train.knn_every", "train.knn_train", "train.knn_test",
                     "train.num_workers", "train.nonfinite", "train.compile", "train.grad_checkpointing", "eval_data")
FLAGGED_ON_RESUME = ("optim",)  # changeable only with allow_optim_change (`--allow-optim-change`)


def _flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, dict) and x:
        out: dict[str, Any] = {}
        for k, v in x.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: x}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def recipe_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} between two resolved recipes, ignoring name/output_dir/method."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not _under(k, IGNORED_ON_RESUME)}


def check_recipe_change(ckpt_path: Path, recipe: Recipe, allow_optim_change: bool) -> dict[str, tuple[Any, Any]]:
    """The changes of ``recipe`` against the checkpoint's; refuses those that cannot change mid-run."""
    f = ckpt_path / "recipe.yaml"
    try:
        old = yaml_load(f.read_text(), str(f))
    except OSError as exc:
        raise CheckpointError(f"{ckpt_path}: cannot read its recipe.yaml ({exc.strerror or exc}); the checkpoint is damaged") from None
    if not isinstance(old, dict):
        raise CheckpointError(f"{f}: not a recipe mapping; the checkpoint is damaged")
    changes = recipe_changes(old, yaml_load(dump(recipe), "recipe"))
    fixed = {k: v for k, v in changes.items() if not _under(k, MUTABLE_ON_RESUME)
             and not (allow_optim_change and _under(k, FLAGGED_ON_RESUME))}
    if fixed:
        listed = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(fixed.items())[:8])
        more = f" (and {len(fixed) - 8} more)" if len(fixed) > 8 else ""
        hint = (" optim.* may change with --allow-optim-change." if any(_under(k, FLAGGED_ON_RESUME) for k in fixed)
                else "")
        raise ConfigError(f"--resume: the recipe differs from the checkpoint's ({ckpt_path}) in keys that cannot "
                          f"change mid-run: {listed}{more}. Keys that may: {', '.join(MUTABLE_ON_RESUME)}.{hint}")
    return changes


def metrics_upto(metrics: Path, step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` up to ``step`` (a torn or unparseable line is dropped)."""
    keep = []
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    return keep
