"""Pretraining under Hugging Face Accelerate: one CPU, one GPU, or many with ``accelerate launch``.

What it guarantees: the lr/wd schedule is a function of the optimizer step; data order, augmentation and
masks derive from (seed, epoch, index); checkpoints are atomic and hold everything needed to
continue bitwise-identically on the CPU; SIGTERM/SIGINT save and exit; a non-finite loss
stops the run naming the step and the terms (or skips the step, when the recipe says so).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as dist_
from .api import build_dataset, build_model, held_out_dataset, load_state
from .config import OptimConfig, Recipe, TrainConfig, dump, resolve
from .data import BatchedView, SeededDataset, collate, epoch_batches, has_batch_path, seed_for
from .errors import CheckpointError, DataError, MimkitError
from .evaluation.knn import knn_predict
from .plugins import registry as get_registry
from .optim import make_optimizer
from .rundir import (RunLock, check_recipe_change, check_run_dir, metrics_upto, prepare_run_dir,
                     write_file)
from .schedules import lr_at, wd_at  # noqa: F401  (lr_at: re-exported)
from .types import Context
from .viz import loss_curve, visualizer_name


class NonFiniteLoss(MimkitError):
    """The loss became NaN or infinite."""


def resolve_precision(value: str) -> str:
    """``auto`` -> bf16 where the device computes it natively (CUDA with bf16, or a CPU with
    AVX512-BF16/AMX), else full precision; other values pass through."""
    if value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    except (AttributeError, RuntimeError):
        return "no"


def fast_path(tc: TrainConfig, optimizer: torch.optim.Optimizer, device: torch.device) -> dict[str, Any]:
    """The speed levers chosen at run time (recorded in meta.json; each has a recipe switch):
    ``train.compile`` (auto: CUDA only), ``optim.impl`` (auto: fused AdamW/SGD), ``train.attention``
    (auto: torch's SDPA dispatch, i.e. flash/memory-efficient kernels on CUDA, the CPU flash kernel)."""
    d = optimizer.defaults
    impl = "fused" if d.get("fused") else ("foreach" if d.get("foreach") else "for-loop")
    compile_ = device.type == "cuda" if tc.compile == "auto" else bool(tc.compile)
    return {"compile": compile_, "optimizer": impl, "attention": tc.attention}


def compile_errors_fall_back(on: bool):
    """While on, a frame that ``torch.compile`` fails to compile runs eagerly (dynamo's
    ``suppress_errors``; its calls are still compiled) instead of ending the run. Seen on a lent
    H200 with torch 2.11: dynamo could not guard the globals of attrs' generated ``__init__``
    (``Outputs(...)``), so ``compile: auto`` stopped every CUDA run at its first step."""
    if not on:
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(suppress_errors=True)


def compiled_frames() -> dict[str, int]:
    """Frames dynamo was asked to compile in this process and how many it compiled."""
    from torch._dynamo.utils import counters

    return {"total": int(counters["frames"]["total"]), "ok": int(counters["frames"]["ok"])}


def attention_backend(name: str):
    """A context forcing one SDPA backend, or a no-op for ``auto``."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name])


# ---------------------------------------------------------------------------------------------
# Run folder


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(recipe: Recipe, accelerator: Accelerator) -> dict[str, Any]:
    reg = get_registry()
    return {
        "name": recipe.name,
        "seed": recipe.seed,
        "deterministic": recipe.train.deterministic,
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": resolve_precision(recipe.train.mixed_precision),
        "versions": {p.name: p.version for p in reg.plugins if not p.broken}
        | {"torch": torch.__version__, "python": platform.python_version()},
        "broken_plugins": {p.name: p.error for p in reg.plugins if p.broken},
        "git_commit": _git_commit(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------------------------
# The loop


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and returns."""

    def __init__(self) -> None:
        self.flag = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@attrs.frozen
class Plan:
    """The run's arithmetic, a pure function of the dataset size, the recipe and the world size."""

    global_batch: int  # samples per micro-step over all processes
    micro_per_epoch: int  # micro-batches per epoch (a multiple of grad_accum)
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int
    effective_batch: int  # samples per optimizer step
    peak_lr: float
    warmup_steps: int

    @classmethod
    def make(cls, num_samples: int, tc: TrainConfig, oc: OptimConfig, world: int = 1) -> "Plan":
        global_batch = tc.batch_size * world
        micro_per_epoch = (num_samples // global_batch) // tc.grad_accum * tc.grad_accum
        if micro_per_epoch == 0:
            raise MimkitError(
                f"dataset of {num_samples} samples is smaller than one optimizer step "
                f"({global_batch} x {tc.grad_accum} accumulation); lower train.batch_size"
            )
        steps_per_epoch = micro_per_epoch // tc.grad_accum
        total_steps = max(1, int(round(tc.epochs * steps_per_epoch)))
        if tc.max_steps is not None:
            total_steps = min(total_steps, tc.max_steps)
        effective_batch = global_batch * tc.grad_accum
        peak_lr = oc.lr if oc.lr is not None else oc.base_lr * effective_batch / oc.ref_batch
        return cls(global_batch, micro_per_epoch, steps_per_epoch, total_steps, effective_batch, peak_lr,
                   int(round(oc.warmup_epochs * steps_per_epoch)))


@attrs.define
class RunState:
    """Where the loop is (saved in every checkpoint) and the current logging window."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    skipped: int = 0
    bad_files: int = 0
    status: str = "finished"
    lr: float = 0.0
    sums: dict[str, torch.Tensor] = attrs.field(factory=dict)  # loss terms summed over the window
    count: int = 0
    t_log: float = attrs.field(factory=time.perf_counter)
    seen_log: int = 0


def _accelerator(recipe: Recipe, run_dir: Path) -> Accelerator:
    # Without CUDA, `accelerate launch --multi_gpu` starts the processes but Accelerate only joins
    # them (gloo) when told to run on the CPU.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if not distributed:  # Accelerate's state is a process singleton: let notebooks train twice
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    strategy, source = dist_.resolve_strategy(recipe.train.distributed, world)
    plugin = dist_.fsdp_plugin(recipe.train.distributed) if strategy == "fsdp" else None
    if strategy == "ddp":  # the recipe wins over an `accelerate config` that asked for FSDP
        os.environ["ACCELERATE_USE_FSDP"] = "false"
    accelerator = Accelerator(
        cpu=distributed and not torch.cuda.is_available(),
        mixed_precision=resolve_precision(recipe.train.mixed_precision),
        gradient_accumulation_steps=recipe.train.grad_accum,
        log_with="tensorboard",
        project_dir=str(run_dir),
        fsdp_plugin=plugin,
    )
    accelerator.mimkit_strategy = (strategy, source, plugin)  # read by _Run
    return accelerator


def _build(recipe: Recipe) -> tuple[torch.nn.Module, Any]:
    """The model (same initial weights on every rank) and the training dataset."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    if recipe.train.grad_checkpointing:  # activation checkpointing in the encoder and the decoder
        if hasattr(getattr(model, "encoder", None), "vit"):
            model.encoder.vit.set_grad_checkpointing(True)
        if hasattr(getattr(model, "decoder", None), "grad_checkpointing"):
            model.decoder.grad_checkpointing = True
    return model, build_dataset(recipe)


class _Run:
    """One training run's live objects and its named steps."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator, model: torch.nn.Module, plan: Plan,
                 run_dir: Path, allow_optim_change: bool = False):
        self.allow_optim_change, self.changes = allow_optim_change, {}
        self.recipe, self.accelerator, self.plan, self.run_dir = recipe, accelerator, plan, run_dir
        self.tc, self.oc = recipe.train, recipe.optim
        self.ckpt_dir, self.metrics_file = run_dir / "checkpoints", run_dir / "metrics.jsonl"
        self.main, self.world, self.rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
        optimizer = make_optimizer(model, self.oc, lr=0.0)
        self.fast = fast_path(self.tc, optimizer, accelerator.device)
        strategy, source, plugin = getattr(accelerator, "mimkit_strategy", ("none", "one process", None))
        self.distributed: dict[str, Any] = {"strategy": strategy, "source": source}
        if plugin is not None:
            wrapped = dist_.prepare_fsdp(accelerator, plugin, self.tc.distributed, model,
                                         resolve_precision(self.tc.mixed_precision))
            self.distributed |= {"fsdp_version": 2, "reshard_after_forward": plugin.reshard_after_forward,
                                 "units": wrapped, "checkpoint": "sharded (torch.distributed.checkpoint)"}
        if self.fast["compile"]:
            model = torch.compile(model)
            self.frames_before = compiled_frames()
        self.compile_checked = not self.fast["compile"]
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.fsdp = dist_.is_fsdp(accelerator)
        self.distributed["accelerate"] = accelerator.distributed_type.value
        core = accelerator.unwrap_model(self.model)
        self.core = getattr(core, "_orig_mod", core)
        if hasattr(self.core, "set_schedule"):
            self.core.set_schedule(plan.total_steps, plan.steps_per_epoch)
        self.state = RunState()
        self.data_path = "per-sample"  # or "batched" (train.batched_data and a dataset with get_batch)
        self.knn_last: tuple[int, float, int] | None = None  # (step, top-1, queries) of the last probe

    # -- restore and save ---------------------------------------------------------------------

    def restore(self) -> None:
        """Model, optimizer, RNG and loop position from the newest complete checkpoint."""
        last = ckpt.latest(self.ckpt_dir)
        if last is None:
            self.accelerator.print(f"no complete checkpoint in {self.ckpt_dir}: starting from scratch")
            return
        saved = ckpt.load_json(last / "state.json")
        if saved.get("format") != ckpt.FORMAT_VERSION:
            raise MimkitError(f"{last}: checkpoint format {saved.get('format')} is not {ckpt.FORMAT_VERSION}")
        counters = {k: saved.get(k) for k in ("step", "epoch", "micro")}
        bad = [k for k, v in counters.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
        if bad:
            raise CheckpointError(f"{last / 'state.json'}: {', '.join(bad)} missing or not a count "
                                  f"(got {counters}); the file is damaged")
        p = self.plan
        if counters["micro"] >= p.micro_per_epoch or counters["micro"] % self.tc.grad_accum:
            raise CheckpointError(
                f"{last}: its position (micro-batch {counters['micro']} of epoch {counters['epoch']}) does not fit "
                f"this run's data plan ({p.micro_per_epoch} micro-batches of {p.global_batch} per epoch, accumulation "
                f"{self.tc.grad_accum}): the batch size, dataset or number of processes changed")
        self.changes = check_recipe_change(last, self.recipe, self.allow_optim_change)
        sharded = (last / dist_.SHARDED).is_dir()
        if sharded != self.fsdp:
            raise CheckpointError(
                f"{last} was written {'under FSDP (sharded/)' if sharded else 'without FSDP (model.safetensors)'} but "
                f"this run uses {self.distributed['strategy']} ({self.distributed['source']}); resume it with the "
                "strategy it was written with (train.distributed.strategy, `accelerate config`)")
        if self.fsdp:  # every process reads its shards
            dist_.load_sharded(self.core, self.optimizer.optimizer, last / dist_.SHARDED)
        else:
            load_state(self.core, ckpt.load_tensors(last / "model.safetensors"), str(last / "model.safetensors"))
            self.optimizer.optimizer.load_state_dict(ckpt.load_torch(last / "optimizer.pt"))
        rng_file = last / f"rng_rank{self.rank}.safetensors"
        if rng_file.is_file():
            ckpt.set_rng_state(ckpt.load_tensors(rng_file))
        s = self.state
        s.step, s.epoch, s.micro = counters["step"], counters["epoch"], counters["micro"]
        self.accelerator.print(f"resumed from {last} (step {s.step}, epoch {s.epoch})")
        if self.changes:
            self.accelerator.print("recipe changed on resume: " + "; ".join(
                f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in self.changes.items()) + " (recorded in history.jsonl)")

    def check_compiled(self) -> None:
        """After the first compiled forward: say so, in the log and in meta.json, when dynamo
        fell back to eager for some frames (the run goes on, slower than it could)."""
        self.compile_checked = True
        now = compiled_frames()
        total, ok = now["total"] - self.frames_before["total"], now["ok"] - self.frames_before["ok"]
        if total and ok < total:
            self.fast["compile"] = f"partial: {ok} of {total} frames compiled, the rest eager"
            self.accelerator.print(
                f"warning: torch.compile (train.compile) compiled {ok} of {total} frames with torch "
                f"{torch.__version__}; the others run eagerly (dynamo's reasons are logged above). The run goes on; "
                f"train.compile: false turns compiling off.")
            meta = self.run_dir / "meta.json"
            if self.main and meta.is_file():
                data = json.loads(meta.read_text())
                data.setdefault("fast_path", {})["compile"] = self.fast["compile"]
                write_file(meta, json.dumps(data, indent=1, default=str))

    def write_metadata(self) -> None:
        if self.main:
            p, s = self.plan, self.state
            if s.step == 0:  # a fresh start: a clean log, not rows of an earlier attempt
                for f in (self.metrics_file, self.run_dir / "result.json", self.run_dir / "history.jsonl"):
                    f.unlink(missing_ok=True)
            elif self.metrics_file.is_file():  # drop rows past the checkpoint we resume from
                write_file(self.metrics_file, "".join(line + "\n" for line in metrics_upto(self.metrics_file, s.step)))
            recipe_file = self.run_dir / "recipe.yaml"
            if s.step == 0 or not recipe_file.is_file():  # the original recipe is never overwritten
                write_file(recipe_file, dump(self.recipe))
            if self.changes:
                write_file(self.run_dir / "history.jsonl", json.dumps(
                    {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": s.step, "command": sys.argv,
                     "changes": {k: list(v) for k, v in self.changes.items()}}, default=str) + "\n", "a")
            meta = run_metadata(self.recipe, self.accelerator) | {
                "total_steps": p.total_steps, "peak_lr": p.peak_lr, "effective_batch": p.effective_batch,
                "steps_per_epoch": p.steps_per_epoch, "fast_path": self.fast | {"data": self.data_path},
                "distributed": self.distributed}
            write_file(self.run_dir / "meta.json", json.dumps(meta, indent=1, default=str))
        self.accelerator.init_trackers("tensorboard")

    def save(self, reason: str) -> Path | None:
        """An atomic checkpoint of everything needed to continue bitwise-identically; never of
        non-finite parameters, so the newest checkpoint is always a good one."""
        bad = [n for n, t in self.core.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(dist_.local(t)).all())]
        if self.fsdp:  # each process sees its shards only: agree before anyone writes
            bad = sorted({n for names in gather_object([bad]) for n in names})
        if bad:
            raise NonFiniteLoss(
                f"non-finite parameters at step {self.state.step} ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                f"no checkpoint written over them, the last good one is kept: {ckpt.latest(self.ckpt_dir)}. "
                "Lower the lr, enable optim.clip_grad / bf16")
        rngs = gather_object([ckpt.rng_state()["torch_cpu"]])
        s, path, error = self.state, None, ""
        staged = self.save_shards() if self.fsdp else None
        if self.main:
            files: dict[str, Any] = {} if self.fsdp else {
                "model.safetensors": ckpt.state_dict_for_save(self.core),
                "optimizer.pt": self.optimizer.optimizer.state_dict()}
            files |= {
                "state.json": {"format": ckpt.FORMAT_VERSION, "step": s.step, "epoch": s.epoch, "micro": s.micro,
                               "reason": reason, "world_size": self.world, "total_steps": self.plan.total_steps},
                "recipe.yaml": dump(self.recipe),
            }
            for r, t in enumerate(rngs):
                files[f"rng_rank{r}.safetensors"] = {"torch_cpu": t}
            try:
                path = ckpt.write(self.ckpt_dir, s.step, files, self.tc.keep_last, staged=staged)
            except OSError as exc:  # disk full, quota, permissions: the previous checkpoint is intact
                prev = ckpt.latest(self.ckpt_dir)
                error = (f"cannot write the checkpoint of step {s.step} into {self.ckpt_dir}: {exc}. "
                         f"The previous checkpoint is intact: {prev}")
        if self.world > 1:  # every process stops when the main one could not write: none waits forever
            error = next((e for e in gather_object([error]) if e), "")
        if error:
            raise MimkitError(error)
        self.accelerator.wait_for_everyone()
        return path

    def save_shards(self) -> Path:
        """FSDP: every process writes its model and optimizer shards into the main process's staging
        folder (on a file system all of them see); a failure anywhere removes it and stops every process."""
        from accelerate.utils import broadcast_object_list

        def why(exc: Exception) -> str:
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"

        pid = broadcast_object_list([os.getpid()])[0]
        tmp, error = ckpt.staging(self.ckpt_dir, self.state.step, pid), ""
        if self.main:
            try:
                ckpt.staging(self.ckpt_dir, self.state.step, pid, fresh=True)
            except OSError as exc:
                error = why(exc)
        if not any(gather_object([error])):  # (a barrier too: the folder exists before anyone writes)
            try:
                dist_.save_sharded(self.core, self.optimizer.optimizer, tmp / dist_.SHARDED)
            except Exception as exc:  # noqa: BLE001  (disk full, permissions: reported by every process)
                error = why(exc)
        errors = [e for e in gather_object([error]) if e]
        if errors:
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise MimkitError(f"cannot write the sharded checkpoint of step {self.state.step} into {self.ckpt_dir}: "
                              f"{errors[0]}. The previous checkpoint is intact: {ckpt.latest(self.ckpt_dir)}")
        return tmp

    def plain_model(self) -> torch.nn.Module | None:
        """The model for the main process's probes and pictures: itself, or under FSDP a plain copy
        built from the consolidated shards (collective: every process calls it; None off the main)."""
        if not self.fsdp:
            return self.core
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.core, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        with torch.random.fork_rng(devices=[]):
            plain = build_model(self.recipe)
        plain.load_state_dict(state)
        return plain.to(self.accelerator.device).train(self.core.training)

    # -- the step -----------------------------------------------------------------------------

    def set_schedule(self) -> None:
        """lr and weight decay of the current step into every parameter group."""
        p, step = self.plan, self.state.step
        self.state.lr = lr = lr_at(step, p.peak_lr, self.oc, p.warmup_steps, p.total_steps)
        wd = wd_at(step, self.oc, p.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
            if g.get("apply_wd"):
                g["weight_decay"] = wd

    def loader(self, seeded: SeededDataset) -> DataLoader:
        """The rest of the current epoch's batches for this process."""
        s, p = self.state, self.plan
        seeded.set_epoch(s.epoch)
        batches = epoch_batches(len(seeded), self.recipe.seed, s.epoch, p.global_batch, self.rank,
                                self.world)[:p.micro_per_epoch]
        # A loader of its own generator: creating the iterator would otherwise draw from the global
        # RNG (drop path, dropout), at a different point on resume than in the uninterrupted run.
        own = torch.Generator().manual_seed(seed_for(self.recipe.seed, s.epoch, self.rank, 4))
        pin = self.accelerator.device.type == "cuda"
        if self.tc.batched_data and seeded.batched:  # one get_batch call per batch (mimkit.batchaug)
            return DataLoader(BatchedView(seeded), batch_size=None, sampler=batches[s.micro:], generator=own,
                              num_workers=self.tc.num_workers, pin_memory=pin)
        return DataLoader(seeded, batch_sampler=batches[s.micro:], collate_fn=collate, generator=own,
                          num_workers=self.tc.num_workers, pin_memory=pin)

    def train_step(self, batch: dict, ctx: Context) -> bool:
        """Forward, backward and (at the accumulation boundary) the optimizer step of one
        micro-batch; returns whether an optimizer step ended."""
        acc, s = self.accelerator, self.state
        skipped = batch.pop("_skipped", [])
        s.bad_files += len(skipped)
        if not batch:  # bad_data: skip dropped every item of this batch
            raise DataError(f"every file of a training batch was unreadable ({len(skipped)} files, e.g. "
                            f"{skipped[0] if skipped else '?'}); bad_data: skip cannot train on nothing: check the data")
        batch = {k: (v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        ctx.step, ctx.epoch = s.step, s.epoch
        with acc.accumulate(self.model), attention_backend(self.tc.attention):
            with compile_errors_fall_back(self.fast["compile"] is not False):
                out = self.model(batch, ctx)
            if not self.compile_checked:
                self.check_compiled()
            finite = True
            if self.tc.nonfinite == "skip":  # every rank must agree before anyone skips backward
                bad = torch.tensor(0.0 if bool(torch.isfinite(out.loss)) else 1.0, device=acc.device)
                finite = acc.reduce(bad, "sum").item() == 0
            if finite:
                acc.backward(out.loss)
                if acc.sync_gradients and self.oc.clip_grad is not None:
                    acc.clip_grad_norm_(self.model.parameters(), self.oc.clip_grad)
                self.optimizer.step()
            else:
                s.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
        s.micro += 1
        if finite:
            for k, v in {"loss": out.loss, **{f"loss/{n}": t for n, t in out.losses.items()}}.items():
                s.sums[k] = s.sums.get(k, 0.0) + v.detach().float()
            s.count += 1
        if not acc.sync_gradients:
            return False
        s.step += 1
        if hasattr(self.core, "on_step_end"):
            self.core.on_step_end(s.step)
        self.set_schedule()
        s.seen_log += self.plan.effective_batch
        return True

    # -- logging ------------------------------------------------------------------------------

    def window_terms(self) -> dict[str, float]:
        s = self.state
        return {k: self.accelerator.reduce(v / s.count, "mean").item() for k, v in s.sums.items()}

    def check_finite(self, terms: dict[str, float]) -> None:
        if not all(math.isfinite(v) for v in terms.values()):
            named = ", ".join(f"{k}={v}" for k, v in terms.items())
            raise NonFiniteLoss(
                f"non-finite loss at step {self.state.step} ({named}); the last good checkpoint is kept: "
                f"{ckpt.latest(self.ckpt_dir)}. Lower the lr, enable optim.clip_grad / bf16, or set train.nonfinite=skip"
            )

    def log_window(self, bar: tqdm) -> None:
        """Mean loss terms since the last row -> metrics.jsonl, TensorBoard and the progress bar."""
        s = self.state
        terms = self.window_terms()
        if self.tc.nonfinite == "stop":
            self.check_finite(terms)
        dt = time.perf_counter() - s.t_log
        rate = s.seen_log / dt if dt > 0 else 0.0
        row = {"step": s.step, "epoch": s.epoch, "lr": s.lr, "images_per_s": rate, **terms}
        if s.skipped:
            row["skipped_steps"] = s.skipped
        if self.main:
            write_file(self.metrics_file, json.dumps(row) + "\n", "a")
            bar.set_postfix(loss=f"{terms['loss']:.4f}", img_s=f"{rate:.0f}", lr=f"{s.lr:.2e}")
        self.accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=s.step)
        s.sums, s.count, s.t_log, s.seen_log = {}, 0, time.perf_counter(), 0

    def probe_knn(self, probe: "_OnlineKNN | None") -> None:
        model = self.plain_model()  # every process (under FSDP the shards are gathered)
        if probe is not None and probe.ready:
            try:
                top1 = probe(model)
            except Exception as exc:  # noqa: BLE001  (a probe never stops the training)
                probe.disable(f"it failed: {type(exc).__name__}: {exc}")
                self.accelerator.wait_for_everyone()
                return
            self.knn_last = (self.state.step, top1, len(probe.queries))
            write_file(self.metrics_file, json.dumps({"step": self.state.step, "knn_top1": top1}) + "\n", "a")
            self.accelerator.log({"knn_top1": top1}, step=self.state.step)
        self.accelerator.wait_for_everyone()

    def end_epoch_if_done(self) -> None:
        s = self.state
        if s.micro >= self.plan.micro_per_epoch:
            s.epoch, s.micro = s.epoch + 1, 0
            if hasattr(self.core, "on_epoch_end"):
                self.core.on_epoch_end(s.epoch)
            if s.bad_files and self.main:
                self.accelerator.print(f"epoch {s.epoch}: skipped {s.bad_files} unreadable files so far")

    def stop_requested(self, stop: "_Stop") -> bool:
        """A signal on any process stops every process."""
        if self.world == 1:
            return stop.flag
        flag = torch.tensor(1.0 if stop.flag else 0.0, device=self.accelerator.device)
        return self.accelerator.reduce(flag, "sum").item() > 0

    def finish(self) -> None:
        s = self.state
        wants_pictures = self.tc.visualize and s.status == "finished"
        model = self.plain_model() if wants_pictures else None  # collective under FSDP
        self.accelerator.end_training()
        if not self.main:
            return
        result = {"status": s.status, "step": s.step, "epoch": s.epoch, "skipped_steps": s.skipped,
                  "bad_files": s.bad_files}
        write_file(self.run_dir / "result.json", json.dumps(result, indent=1))
        if s.status == "preempted":
            print(f"stopped by signal at step {s.step}; checkpoint saved. Continue with --resume", file=sys.stderr)
        if self.tc.visualize and s.status == "finished":
            try:  # nothing after the last checkpoint may fail a finished run
                _pictures(model, self.recipe, self.run_dir)
            except Exception as exc:  # noqa: BLE001  (reported, never raised)
                print(f"warning: the end-of-run pictures failed ({type(exc).__name__}: {exc}); the run finished "
                      f"and its checkpoint is saved in {self.ckpt_dir}", file=sys.stderr)
        if self.knn_last is not None:
            step, top1, n = self.knn_last
            print(f"online k-NN top-1 at step {step}: {top1:.1%} ({n} held-out images, k=20)")


def train(
    recipe: Any,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_optim_change: bool = False,
) -> Path:
    """Pretrain the recipe's model; returns the run folder (``output_dir/name``).

    ``resume`` continues from the newest complete checkpoint (the recipe may differ only in
    :data:`MUTABLE_ON_RESUME` keys, and in ``optim.*`` with ``allow_optim_change``; changes
    are recorded in ``history.jsonl``); ``overwrite`` first empties a folder that is a mimkit
    run. The run folder is locked against a second writer for the whole run."""
    recipe = resolve(recipe, overrides)  # fully validated: nothing on disk changes on a typo
    tc = recipe.train
    run_dir = Path(recipe.output_dir) / recipe.name
    check_run_dir(run_dir, resume, overwrite)
    accelerator = _accelerator(recipe, run_dir)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, dataset = _build(recipe)  # before the run folder changes: a bad data path leaves it intact
    plan = Plan.make(len(dataset), tc, recipe.optim, accelerator.num_processes)
    lock = RunLock(run_dir)
    try:
        if accelerator.is_main_process:
            prepare_run_dir(run_dir, resume, overwrite, lock)
        accelerator.wait_for_everyone()
        return _train(recipe, accelerator, model, dataset, plan, run_dir, resume, allow_optim_change)
    finally:
        lock.release()


def _train(recipe: Recipe, accelerator: Accelerator, model: torch.nn.Module, dataset: Any, plan: Plan,
           run_dir: Path, resume: bool, allow_optim_change: bool) -> Path:
    tc = recipe.train
    seeded = SeededDataset(dataset, recipe.seed, getattr(getattr(model, "masker", None), "sample_noise", None))
    run = _Run(recipe, accelerator, model, plan, run_dir, allow_optim_change)
    run.data_path = "batched" if tc.batched_data and seeded.batched else "per-sample"
    if resume:
        run.restore()
    if not resume or run.state.step == 0:
        torch.manual_seed(seed_for(recipe.seed, run.rank, 3))  # per-rank dropout / drop-path stream
    run.write_metadata()

    s = run.state
    bar = tqdm(total=plan.total_steps, initial=s.step, disable=not (run.main and tc.progress), desc=recipe.name,
               dynamic_ncols=True, mininterval=1.0)
    ctx = Context(generator=None)
    probe = _OnlineKNN(recipe, accelerator) if tc.knn_every and run.main else None
    run.model.train()
    run.set_schedule()
    with _Stop() as stop:
        while s.step < plan.total_steps and s.status == "finished":
            batches = 0
            for batch in run.loader(seeded):
                batches += 1
                if not run.train_step(batch, ctx):
                    continue
                bar.update(1)
                last_step = s.step >= plan.total_steps
                if (s.step % tc.log_every == 0 or last_step) and s.count:
                    run.log_window(bar)
                if tc.knn_every and (s.step % tc.knn_every == 0 or last_step):
                    run.probe_knn(probe)
                run.end_epoch_if_done()
                stop_now = run.stop_requested(stop)
                if s.step % tc.ckpt_every == 0 or last_step or stop_now:
                    if s.count and tc.nonfinite == "stop":  # never write a checkpoint over a non-finite state
                        run.check_finite(run.window_terms())
                    run.save("preempted" if stop_now and not last_step else "periodic")
                if stop_now and not last_step:
                    s.status = "preempted"
                if last_step or s.status != "finished":
                    break
            if batches == 0:  # never spin on an empty epoch (signals would not be seen)
                raise MimkitError(f"epoch {s.epoch} has no batches left at micro-batch {s.micro} of "
                                  f"{plan.micro_per_epoch}: the data plan does not fit the run's position")
    bar.close()
    run.finish()
    return run_dir


class _OnlineKNN:
    """Weighted k-NN (k=20, T=0.07) of [CLS] features: a bank of un-augmented training items
    against held-out queries, to watch representations improve during pretraining."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator):
        from torch.utils.data import Subset

        from .evaluation.common import dataset_labels

        self.device, self.ready = accelerator.device, False
        try:
            train = build_dataset(recipe, train=False)
            test = held_out_dataset(recipe)
            if test is None:
                return self.disable(f"data source {recipe.data.get('name')!r} has no labelled held-out split "
                                    "(no eval_data, no val/test folder beside data.root)")
            self.bank = Subset(train, range(min(recipe.train.knn_train, len(train))))
            self.queries = Subset(test, range(min(recipe.train.knn_test, len(test))))
            if (dataset_labels(self.bank) < 0).any() or (dataset_labels(self.queries) < 0).any():
                return self.disable("the data has no labels (no class folders)")
        except Exception as exc:  # noqa: BLE001  (a probe never stops the training)
            return self.disable(f"its data could not be built: {type(exc).__name__}: {exc}")
        self.ready = True

    def disable(self, why: str) -> None:
        self.ready = False
        print(f"online k-NN skipped: {why}", file=sys.stderr, flush=True)

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, ds) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        base = getattr(ds, "dataset", None)  # a Subset: its first items, batched when the dataset can
        if base is not None and has_batch_path(base):
            idx = list(ds.indices)
            batches = (base.get_batch(idx[k:k + 256], [0] * len(idx[k:k + 256])) for k in range(0, len(idx), 256))
        else:
            batches = DataLoader(ds, batch_size=256, collate_fn=collate)
        for batch in batches:
            feats.append(model.features(batch["image"].to(self.device)).float().cpu())
            labels.append(batch["label"])
        return torch.cat(feats), torch.cat(labels)

    def __call__(self, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        bank_f, bank_y = self._features(model, self.bank)
        q_f, q_y = self._features(model, self.queries)
        model.train(was_training)
        classes = int(max(bank_y.max(), q_y.max())) + 1
        scores = knn_predict(bank_f, bank_y, q_f, classes)
        return float((scores.argmax(1) == q_y).float().mean())


def _pictures(model: torch.nn.Module, recipe: Recipe, run_dir: Path) -> None:
    """loss_curve.png and, for pixel targets, reconstructions.png of held-out images."""
    if (run_dir / "metrics.jsonl").is_file():
        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", title=f"{recipe.name}: training loss")
    vis_name = visualizer_name(model)
    if vis_name is None:
        return
    reg = get_registry()
    vis_cls = reg.get("visualizers", vis_name)
    dataset, what = held_out_dataset(recipe), "held-out images"
    if dataset is None:  # no held-out split: training images, un-augmented
        dataset, what = build_dataset(recipe, train=False), "training images, un-augmented"
    items = [dataset[i] for i in range(min(8, len(dataset)))]
    batch = collate(items)
    batch.pop("_skipped", None)
    device = next(model.parameters()).device
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    vis_cls()(model, batch, run_dir / "reconstructions.png", mean=dataset.mean, std=dataset.std,
              seed=recipe.seed, title=f"{recipe.name} ({what})")

