"""Pretraining under Hugging Face Accelerate: one CPU, one GPU, or many with ``accelerate launch``.

What it guarantees: the lr/wd schedule is a function of the optimizer step; data order, augmentation and
masks derive from (seed, epoch, index); checkpoints are atomic and hold everything needed to
continue bitwise-identically on the CPU; SIGTERM/SIGINT save and exit; a non-finite loss
stops the run naming the step and the terms (or skips the step, when the recipe says so).
"""
from __future__ import annotations

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

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .api import build_dataset, build_model, load_state
from .config import OptimConfig, Recipe, dump, resolve
from .data import SeededDataset, collate, epoch_batches, seed_for
from .errors import MimkitError
from .plugins import registry as get_registry
from .types import Context


class NonFiniteLoss(MimkitError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# Optimizer and schedules


def param_groups(model: torch.nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """Two groups: decayed weights, and 1-D params and biases without decay (the official MAE
    rule). With ``decay_tokens=False`` cls/mask tokens and position tables are exempt too."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        token = any(t in name.split(".")[-1] for t in ("cls_token", "mask_token", "pos_embed", "dist_token"))
        if p.ndim <= 1 or name.endswith(".bias") or (token and not decay_tokens):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_tokens)
    # One fused kernel per step (about 10% of a bf16 ViT-B step on the CPU, benchmarks/README.md)
    # when every parameter lives on a device that has it; ``auto`` falls back to foreach.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused_ok = devices <= {"cpu", "cuda"}
    impl = cfg.impl if cfg.impl != "auto" else ("fused" if fused_ok else "foreach")
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **kwargs)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **kwargs)


def lr_at(step: int, peak: float, cfg: OptimConfig, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from ``warmup_start_lr`` to ``peak``, then half-cycle cosine to ``min_lr``
    (per step, as the official code adjusts per iteration)."""
    if step < warmup_steps:
        return cfg.warmup_start_lr + (peak - cfg.warmup_start_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wd_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Constant weight decay, or a cosine from ``weight_decay`` to ``weight_decay_end``."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    progress = min(1.0, step / max(1, total_steps))
    return cfg.weight_decay_end + (cfg.weight_decay - cfg.weight_decay_end) * 0.5 * (1 + math.cos(math.pi * progress))


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


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise MimkitError(f"run folder {run_dir} is not writable: {exc}") from None


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


def train(
    recipe: Any,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Pretrain the recipe's model; returns the run folder (``output_dir/name``)."""
    recipe = resolve(recipe, overrides)
    tc, oc = recipe.train, recipe.optim
    run_dir = Path(recipe.output_dir) / recipe.name
    ckpt_dir = run_dir / "checkpoints"
    # Without CUDA, `accelerate launch --multi_gpu` starts the processes but Accelerate only joins
    # them (gloo) when told to run on the CPU.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu_distributed = distributed and not torch.cuda.is_available()
    if not distributed:  # Accelerate's state is a process singleton: let notebooks train twice
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu_distributed,
        mixed_precision=resolve_precision(tc.mixed_precision),
        gradient_accumulation_steps=tc.grad_accum,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    main = accelerator.is_main_process
    if main:
        if ckpt_dir.exists() and ckpt.complete_checkpoints(ckpt_dir) and not (resume or overwrite):
            raise MimkitError(f"{run_dir} already holds checkpoints: pass --resume to continue or --overwrite to start over")
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        _check_writable(run_dir)
    accelerator.wait_for_everyone()
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    torch.manual_seed(recipe.seed)  # same initial weights on every rank
    model = build_model(recipe)
    if tc.grad_checkpointing:  # activation checkpointing in the encoder and the decoder
        if hasattr(getattr(model, "encoder", None), "vit"):
            model.encoder.vit.set_grad_checkpointing(True)
        if hasattr(getattr(model, "decoder", None), "grad_checkpointing"):
            model.decoder.grad_checkpointing = True
    dataset = build_dataset(recipe)
    seeded = SeededDataset(dataset, recipe.seed, getattr(getattr(model, "masker", None), "sample_noise", None))

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = tc.batch_size * world
    micro_per_epoch = (len(dataset) // global_batch) // tc.grad_accum * tc.grad_accum
    if micro_per_epoch == 0:
        raise MimkitError(
            f"dataset of {len(dataset)} samples is smaller than one optimizer step "
            f"({global_batch} x {tc.grad_accum} accumulation); lower train.batch_size"
        )
    steps_per_epoch = micro_per_epoch // tc.grad_accum
    total_steps = max(1, int(round(tc.epochs * steps_per_epoch)))
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    eff_batch = global_batch * tc.grad_accum
    peak_lr = oc.lr if oc.lr is not None else oc.base_lr * eff_batch / oc.ref_batch
    warmup_steps = int(round(oc.warmup_epochs * steps_per_epoch))

    optimizer = make_optimizer(model, oc, lr=0.0)
    if tc.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    core = getattr(core, "_orig_mod", core)

    if hasattr(core, "set_schedule"):
        core.set_schedule(total_steps, steps_per_epoch)
    step, epoch, micro = 0, 0, 0
    if resume:
        last = ckpt.latest(ckpt_dir)
        if last is None:
            accelerator.print(f"no complete checkpoint in {ckpt_dir}: starting from scratch")
        else:
            state = ckpt.load_json(last / "state.json")
            if state.get("format") != ckpt.FORMAT_VERSION:
                raise MimkitError(f"{last}: checkpoint format {state.get('format')} is not {ckpt.FORMAT_VERSION}")
            load_state(core, ckpt.load_tensors(last / "model.safetensors"), str(last / "model.safetensors"))
            optimizer.optimizer.load_state_dict(ckpt.load_torch(last / "optimizer.pt"))
            rng_file = last / f"rng_rank{rank}.safetensors"
            if rng_file.is_file():
                ckpt.set_rng_state(ckpt.load_tensors(rng_file))
            step, epoch, micro = state["step"], state["epoch"], state["micro"]
            accelerator.print(f"resumed from {last} (step {step}, epoch {epoch})")
            if (last / "recipe.yaml").read_text() != dump(recipe):
                accelerator.print("warning: the recipe differs from the one the checkpoint was trained with")
    if not resume or step == 0:
        torch.manual_seed(seed_for(recipe.seed, rank, 3))  # per-rank dropout / drop-path stream

    if main:
        (run_dir / "recipe.yaml").write_text(dump(recipe))
        meta = run_metadata(recipe, accelerator) | {"total_steps": total_steps, "peak_lr": peak_lr,
                                                    "effective_batch": eff_batch, "steps_per_epoch": steps_per_epoch}
        (run_dir / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    accelerator.init_trackers("tensorboard")

    def save(reason: str) -> Path | None:
        rngs = gather_object([ckpt.rng_state()["torch_cpu"]])
        path = None
        if main:
            files: dict[str, Any] = {
                "model.safetensors": ckpt.state_dict_for_save(core),
                "optimizer.pt": optimizer.optimizer.state_dict(),
                "state.json": {"format": ckpt.FORMAT_VERSION, "step": step, "epoch": epoch, "micro": micro,
                               "reason": reason, "world_size": world, "total_steps": total_steps},
                "recipe.yaml": dump(recipe),
            }
            for r, t in enumerate(rngs):
                files[f"rng_rank{r}.safetensors"] = {"torch_cpu": t}
            try:
                path = ckpt.write(ckpt_dir, step, files, tc.keep_last)
            except OSError as exc:  # disk full, quota, permissions: the previous checkpoint is intact
                prev = ckpt.latest(ckpt_dir)
                raise MimkitError(f"cannot write the checkpoint of step {step} into {ckpt_dir}: {exc}. "
                                  f"The previous checkpoint is intact: {prev}") from None
        accelerator.wait_for_everyone()
        return path

    metrics_file = run_dir / "metrics.jsonl"
    bar = tqdm(total=total_steps, initial=step, disable=not (main and tc.progress), desc=recipe.name,
               dynamic_ncols=True, mininterval=1.0)
    sums: dict[str, torch.Tensor] = {}
    count, skipped, bad_files = 0, 0, 0
    t_log, seen_log = time.perf_counter(), 0
    ctx = Context(generator=None)
    model.train()

    def set_schedule(s: int) -> float:
        lr = lr_at(s, peak_lr, oc, warmup_steps, total_steps)
        wd = wd_at(s, oc, total_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
            if g.get("apply_wd"):
                g["weight_decay"] = wd
        return lr

    def check_finite(terms: dict[str, float], at: int) -> None:
        if not all(math.isfinite(v) for v in terms.values()):
            named = ", ".join(f"{k}={v}" for k, v in terms.items())
            raise NonFiniteLoss(
                f"non-finite loss at step {at} ({named}); the last good checkpoint in {ckpt_dir} is kept. "
                "Lower the lr, enable train.clip_grad / bf16, or set train.nonfinite=skip"
            )

    probe = _OnlineKNN(recipe, accelerator) if tc.knn_every and main else None

    status = "finished"
    lr = set_schedule(step)
    with _Stop() as stop:
        while step < total_steps and status == "finished":
            seeded.set_epoch(epoch)
            batches = epoch_batches(len(dataset), recipe.seed, epoch, global_batch, rank, world)[:micro_per_epoch]
            loader = DataLoader(seeded, batch_sampler=batches[micro:], collate_fn=collate,
                                num_workers=tc.num_workers, pin_memory=accelerator.device.type == "cuda")
            for batch in loader:
                bad_files += len(batch.pop("_skipped", []))
                batch = {k: (v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v)
                         for k, v in batch.items()}
                ctx.step, ctx.epoch = step, epoch
                with accelerator.accumulate(model):
                    out = model(batch, ctx)
                    finite = True
                    if tc.nonfinite == "skip":  # every rank must agree before anyone skips backward
                        bad = torch.tensor(0.0 if bool(torch.isfinite(out.loss)) else 1.0, device=accelerator.device)
                        finite = accelerator.reduce(bad, "sum").item() == 0
                    if finite:
                        accelerator.backward(out.loss)
                        if accelerator.sync_gradients and oc.clip_grad is not None:
                            accelerator.clip_grad_norm_(model.parameters(), oc.clip_grad)
                        optimizer.step()
                    else:
                        skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                micro += 1
                if finite:
                    for k, v in {"loss": out.loss, **{f"loss/{n}": t for n, t in out.losses.items()}}.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                    count += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if hasattr(core, "on_step_end"):
                    core.on_step_end(step)
                lr = set_schedule(step)
                seen_log += eff_batch
                bar.update(1)
                last_step = step >= total_steps
                if (step % tc.log_every == 0 or last_step) and count:
                    terms = {k: accelerator.reduce(v / count, "mean").item() for k, v in sums.items()}
                    if tc.nonfinite == "stop":
                        check_finite(terms, step)
                    dt = time.perf_counter() - t_log
                    rate = seen_log / dt if dt > 0 else 0.0
                    row = {"step": step, "epoch": epoch, "lr": lr, "images_per_s": rate, **terms}
                    if skipped:
                        row["skipped_steps"] = skipped
                    if main:
                        with open(metrics_file, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        bar.set_postfix(loss=f"{terms['loss']:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}")
                    accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=step)
                    sums, count, t_log, seen_log = {}, 0, time.perf_counter(), 0
                if tc.knn_every and step % tc.knn_every == 0:
                    if probe is not None:
                        top1 = probe(core)
                        with open(metrics_file, "a") as f:
                            f.write(json.dumps({"step": step, "knn_top1": top1}) + "\n")
                        accelerator.log({"knn_top1": top1}, step=step)
                    accelerator.wait_for_everyone()
                if micro >= micro_per_epoch:
                    epoch, micro = epoch + 1, 0
                    if hasattr(core, "on_epoch_end"):
                        core.on_epoch_end(epoch)
                    if bad_files and main:
                        accelerator.print(f"epoch {epoch}: skipped {bad_files} unreadable files so far")
                stop_now = stop.flag
                if world > 1:
                    flag = torch.tensor(1.0 if stop.flag else 0.0, device=accelerator.device)
                    stop_now = accelerator.reduce(flag, "sum").item() > 0
                if step % tc.ckpt_every == 0 or last_step or stop_now:
                    if count and tc.nonfinite == "stop":  # never write a checkpoint over a non-finite state
                        check_finite({k: accelerator.reduce(v / count, "mean").item() for k, v in sums.items()}, step)
                    save("preempted" if stop_now and not last_step else "periodic")
                if stop_now and not last_step:
                    status = "preempted"
                if last_step or status != "finished":
                    break
    bar.close()
    accelerator.end_training()
    if main:
        result = {"status": status, "step": step, "epoch": epoch, "skipped_steps": skipped, "bad_files": bad_files}
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
        if status == "preempted":
            print(f"stopped by signal at step {step}; checkpoint saved. Continue with --resume", file=sys.stderr)
        if tc.visualize and status == "finished":
            _pictures(core, recipe, run_dir)
    return run_dir


class _OnlineKNN:
    """Weighted k-NN (k=20, T=0.07) of [CLS] features: a bank of un-augmented training items
    against held-out queries, to watch representations improve during pretraining."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator):
        from torch.utils.data import Subset

        train = build_dataset(recipe, train=False)
        test = build_dataset(recipe, train=False, eval_split=True)
        self.bank = Subset(train, range(min(recipe.train.knn_train, len(train))))
        self.queries = Subset(test, range(min(recipe.train.knn_test, len(test))))
        self.device = accelerator.device

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, ds) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for batch in DataLoader(ds, batch_size=256, collate_fn=collate):
            feats.append(model.features(batch["image"].to(self.device)).float().cpu())
            labels.append(batch["label"])
        return torch.cat(feats), torch.cat(labels)

    def __call__(self, model: torch.nn.Module) -> float:
        from .evaluate import knn_predict

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
    from .viz import loss_curve, visualizer_name

    if (run_dir / "metrics.jsonl").is_file():
        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", title=f"{recipe.name}: training loss")
    vis_name = visualizer_name(model)
    if vis_name is None:
        return
    reg = get_registry()
    vis_cls = reg.get("visualizers", vis_name)
    try:
        dataset = build_dataset(recipe, train=False, eval_split=True)
    except MimkitError:
        return
    items = [dataset[i] for i in range(min(8, len(dataset)))]
    batch = collate(items)
    batch.pop("_skipped", None)
    device = next(model.parameters()).device
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    vis_cls()(model, batch, run_dir / "reconstructions.png", mean=dataset.mean, std=dataset.std,
              seed=recipe.seed, title=f"{recipe.name} (held-out images)")

