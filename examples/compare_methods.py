"""One table for every installed image method: same data, same pretraining budget, same protocols.

    .venv/bin/python examples/compare_methods.py                       # the full comparison (hours; resumable)
    .venv/bin/python examples/compare_methods.py --methods mae supmae random --seeds 0
    .venv/bin/python examples/compare_methods.py --quick --out runs/compare_quick   # smoke scale (~1 min/method)
    python examples/compare_methods.py --jobs 15 --stop-after 360 --set train.compile=false  # a GPU, 15 processes

Methods: every registered preset whose name ends with ``_tiny_fashion_mnist`` (the method is the
preset name without that suffix) less ``EXCLUDED`` (with the reason), plus ``random`` (the common
encoder with a fresh seeded initialization, not pretrained). A method whose encoder at random init
differs from that one (``own_architecture``: MaskFeat / MFM / AttMask use timm's init and learned
positions, iGPT is another model) also gets k-NN and the linear probe of its own architecture at
random init (``randarch_*`` records, the "own arch. random" columns).

Same encoder: every method is run with the encoder of ``mae_tiny_fashion_mnist`` (ViT, 192-d, 6
blocks, 3 heads, patch 4, 32 px: 2.69 M parameters), imposed by ``--set`` overrides where a preset
differs (``encoder_overrides``: CMAE / MACRL / AttMask depth 4 -> 6; MaskFeat patch 8 -> 4 with its
HOG cell 4 -> 2, the paper's patch / cell = 2; iGPT, a GPT-2 over 14x14 pixels, gets the same width,
depth and heads). The method-specific parts stay as the preset ships them (decoders, projectors, the
EMA teachers of AttMask / BootMAE / SdAE, FLIP's text tower) and MILAN's teacher is the FLIP run of
this comparison (same seed, so ``flip`` runs before ``milan``).

Budget: the same number of **pretraining images seen** (``--budget``, default 240,000 = 4 epochs of
Fashion-MNIST, the tiny presets' own length). Each preset keeps its own batch size, schedule shape,
masking, targets and loss weights (its paper's recipe scaled down by its plugin); only the length
changes: ``train.epochs = budget / len(train data)``, ``train.max_steps = ceil(budget / batch)``, and
``optim.warmup_epochs`` scaled by the same factor (the preset's warm-up fraction is kept). Images
seen, not wall-clock, because this machine is shared and its speed varies by 10x with the load: a
wall-clock budget would measure the neighbours. Methods with two views per image (CMAE, Siamese
MIM, ...) count one image per dataset item; their extra cost shows in the images/s and minutes
columns instead.

Per (method, seed): pretraining (seed = the recipe seed), then k-NN and the linear probe on frozen
features (the encoder's ``eval_encoder`` / [CLS]; iGPT: its average-pooled probe layer) and
end-to-end fine-tuning, each at 1% and 10% of the labels (``--fractions``; class-balanced split,
split seed = seed), and the occlusion-invariance measure of ``plugins/siamese_mim`` when that plugin
is installed (``--protocols`` runs a subset; ``NOT_APPLICABLE`` lists what cannot read a method). One JSON per (method, seed, protocol) under ``OUT/results/METHOD/seedS/``; a result that
exists is never recomputed (``--retry-errors`` re-runs the failed ones). The Markdown table is
regenerated between the markers ``<!-- compare:begin -->`` / ``<!-- compare:end -->`` of ``--readme``
and the plot (accuracy vs pretraining minutes, one marker per method) goes to ``OUT/compare.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import mimkit
from mimkit import evaluate as ev
from mimkit.config import apply_overrides, resolve
from mimkit.plugins import registry
from mimkit.viz import pyplot, save_figure

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = "_tiny_fashion_mnist"
RANDOM = "random"
RANDOM_ARCH = "mae" + SUFFIX  # the architecture of the random-init baseline
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
FRACTIONS = (0.01, 0.1)
PROTOCOLS = ("knn", "linprobe", "finetune", "occlusion")


# Methods left out of the default table, with the reason (README "Excluded"); ``--methods`` still
# runs one of them when it has a ``*_tiny_fashion_mnist`` preset.
EXCLUDED = {
    "ttt": "supervised (a ResNet-26 trained on the labels with a rotation head), not self-supervised "
           "pretraining; its encoder is a ResNet, not the common ViT",
    "omnimae": "its tiny preset (omnimae_tiny_fmnist_clips) pretrains on a mixture of 3-channel images and "
               "moving-Fashion-MNIST clips with 2x8x8 cubes: an images-seen budget and the Fashion-MNIST "
               "labelled pool do not map onto it without changing the method (its image-side k-NN is in "
               "plugins/omnimae/README.md)",
}

# The common encoder (the rule): the ViT of mae_tiny_fashion_mnist. Every ViT-encoder preset is
# overridden to these values where it differs; a method that is not a ViT gets the same width, depth
# and heads (METHOD_ENCODER below).
COMMON_VIT = {"embed_dim": 192, "depth": 6, "num_heads": 3, "patch_size": 4, "img_size": 32}
METHOD_ENCODER = {
    # iGPT: a GPT-2 over 14x14 palette pixels (no patches): the same width, depth and heads
    "igpt": {"model.n_embd": 192, "model.n_layer": 6, "model.n_head": 3},
}


# (method, protocol): why that protocol does not apply (no file is written; the table says n/a)
NOT_APPLICABLE = {
    ("igpt", "finetune"): "fine-tuning builds a classifier from a timm ViT encoder; iGPT is a GPT-2 over pixels",
    ("igpt", "occlusion"): "the measure drops patch tokens of a ViT; iGPT has no patches (one token per pixel)",
}


def discover(all_methods: bool = False) -> list[str]:
    """Installed methods with a tiny Fashion-MNIST preset (less EXCLUDED unless ``all_methods``),
    plus the random-init baseline."""
    presets = registry().components["presets"]
    found = sorted(n[: -len(SUFFIX)] for n in presets if n.endswith(SUFFIX))
    return [m for m in found if all_methods or m not in EXCLUDED] + [RANDOM]


def encoder_overrides(method: str, base: Any) -> list[str]:
    """``--set`` overrides that give METHOD the common encoder (empty when its preset has it).

    A ``model.encoder`` with a ViT geometry gets COMMON_VIT; when the patch changes and the
    target is HOG (MaskFeat), the HOG cell is scaled with it (the paper's patch / cell = 2)."""
    if method in METHOD_ENCODER:
        return [f"{k}={v}" for k, v in METHOD_ENCODER[method].items()]
    enc = base.model.get("encoder") if isinstance(base.model, dict) else None
    if not isinstance(enc, dict) or "embed_dim" not in enc:
        return []
    out = [f"model.encoder.{k}={v}" for k, v in COMMON_VIT.items() if enc.get(k) != v]
    target = base.model.get("target") or {}
    if enc.get("patch_size") != COMMON_VIT["patch_size"] and isinstance(target, dict) and "cell" in target:
        cell = target["cell"] * COMMON_VIT["patch_size"] / enc["patch_size"]
        out.append(f"model.target.cell={int(cell)}")
    return out


# ---------------------------------------------------------------------------------------------
# Pretraining cost


def machine() -> str:
    """The CPU as the READMEs name it, e.g. "AMD EPYC, 2 cores, AVX-512 + bf16"."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores" + (f", {ext}" if (ext := cpu_extensions(flags)) else "")


def cpu_extensions(flags: set[str]) -> str:
    """The vector extensions that set our CPU speed: "AVX-512 + bf16", "AVX-512", "AVX2" (the slower
    kind, fp32 only, about 2-3x slower for our models) or "" for neither."""
    if "avx512f" in flags:
        return "AVX-512 + bf16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else ""


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs (sampled every 50 ms);
    on a GPU, the peak allocated CUDA memory as well."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    @staticmethod
    def _rss() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _count(module: torch.nn.Module | None) -> int | None:
    return None if module is None else sum(p.numel() for p in module.parameters())


def pretrain(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``METHOD_tiny_fashion_mnist`` for the budget; the record (cost + run folder)."""
    preset = method + SUFFIX
    name = f"{method}_seed{seed}"
    base = resolve({"method": preset})
    data, key = (base.data, "data") if "base" not in base.data else (base.data["base"], "data.base")  # wrapped views
    n_data = min(60000, int(data.get("limit") or 60000))
    batch = base.train.batch_size
    overrides = [f"name={name}", f"output_dir={args.out / 'runs'}", f"seed={seed}", "train.progress=false",
                 "train.visualize=false"]
    if args.quick:
        n_data, batch = min(n_data, 256), 32
        overrides += [f"{key}.limit={n_data}", f"train.batch_size={batch}"]
    steps = max(1, math.ceil(args.budget / batch))
    epochs = args.budget / n_data
    # the preset's warm-up fraction is kept: warmup_epochs scales with the length
    warmup = base.optim.warmup_epochs * epochs / base.train.epochs
    # a checkpoint every twentieth of the run: a sitting stopped or killed loses at most that much
    overrides += [f"train.epochs={epochs:g}", f"train.max_steps={steps}",
                  f"train.ckpt_every={max(1, math.ceil(steps / 20))}", "train.keep_last=1",
                  f"optim.warmup_epochs={warmup:g}"]
    method_specific = encoder_overrides(method, base)
    teacher = None
    if method == "milan":  # MILAN distils FLIP's image tower: the FLIP run of this comparison, same seed
        flip = args.out / "results" / "flip" / f"seed{seed}" / "pretrain.json"
        rec = json.loads(flip.read_text()) if flip.exists() else {}
        if "run" not in rec:
            raise RuntimeError(f"MILAN needs the FLIP teacher of this comparison: run flip first ({flip} has no run)")
        teacher = rec["run"]
        method_specific.append(f"model.teacher.source={teacher}")
    overrides += method_specific + list(args.set)  # --set: the same execution option for every method
    run_dir = args.out / "runs" / name
    start, sittings = resume_point(run_dir, preset, overrides)
    if start:
        print(f"[compare] {name}: resuming from the checkpoint of step {start} of {steps}", flush=True)
    t0, load0 = time.perf_counter(), loadavg()
    with PeakRSS() as mem:
        run = mimkit.train({"method": preset}, overrides=overrides, resume=bool(start), overwrite=not start)
    status = json.loads((Path(run) / "result.json").read_text())
    sittings.append({"from_step": start, "to_step": status.get("step"), "seconds": round(time.perf_counter() - t0, 2),
                     "machine": machine(), "load_avg_1min": [load0, loadavg()], "torch_threads": torch.get_num_threads(),
                     "peak_rss_mib": round(mem.peak, 1)})
    write_json(run_dir / SITTINGS, sittings)
    if status.get("status") != "finished":  # stopped by a signal: its checkpoint is where the next sitting goes on
        raise SystemExit(f"[compare] pretraining {name} stopped at step {status.get('step')} of {steps} "
                         f"({status.get('status')}); nothing recorded yet, the next sitting resumes it")
    seconds, estimated = sittings_seconds(sittings, status["step"])  # the steps the run took (whole epochs may stop short of `steps`)
    model = ev.load_source(run)
    return {"protocol": "pretrain", "method": method, "preset": preset, "seed": seed, "run": str(run),
            "images_seen": steps * batch, "budget_images": args.budget, "steps": steps, "batch_size": batch,
            "seconds": round(seconds, 2), "minutes": round(seconds / 60, 3), "sittings": sittings,
            "seconds_estimated": estimated,
            "images_per_s": round(steps * batch / seconds, 2), "peak_rss_mib": max(x["peak_rss_mib"] for x in sittings),
            "peak_cuda_mib": mem.cuda_peak, "encoder_params": _count(getattr(model, "encoder", None)),
            "total_params": _count(model), "overrides": overrides, "method_overrides": method_specific,
            "teacher_run": teacher, "machine": sittings_machine(sittings), "load_avg_1min": [load0, loadavg()],
            "torch_threads": torch.get_num_threads(), "extra_overrides": list(args.set),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "parallel_jobs": args.parallel_of}


SITTINGS = "compare_sittings.json"  # in the run folder: the pretraining's sittings, for its cost
# recipe keys that do not change what is trained: a checkpoint that differs only in these is resumed
OPERATIONAL = ("train.ckpt_every", "train.keep_last", "train.log_every", "train.progress", "train.visualize",
               "train.num_workers")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` whole or not at all (a temporary file, then one rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def resume_point(run_dir: Path, preset: str, overrides: list[str]) -> tuple[int, list[dict]]:
    """(step, earlier sittings) to go on from: the newest complete checkpoint of an earlier sitting of
    this very recipe, or (0, []) to start over (no checkpoint, or the recipe changed since)."""
    from mimkit.checkpoint import complete_checkpoints
    from mimkit.config import dump, yaml_load
    from mimkit.rundir import recipe_changes

    done = complete_checkpoints(run_dir / "checkpoints")
    if not done:
        return 0, []
    step, last = done[-1]
    old = yaml_load((last / "recipe.yaml").read_text(), str(last / "recipe.yaml"))
    changed = [k for k in recipe_changes(old, yaml_load(dump(resolve({"method": preset}, overrides)), "recipe"))
               if k not in OPERATIONAL]
    if changed:
        print(f"[compare] {run_dir}: its checkpoint was trained with another recipe ({', '.join(changed[:4])}): "
              "starting over", flush=True)
        return 0, []
    f = run_dir / SITTINGS
    return step, json.loads(f.read_text()) if f.is_file() else []


def sittings_machine(sittings: list[dict]) -> str:
    """The machine of the pretraining, or all of them when its sittings ran on several (its cost is
    then marked as not comparable, like a run made elsewhere)."""
    names = list(dict.fromkeys(x["machine"] for x in sittings))
    return names[0] if len(names) == 1 else "several machines (" + "; ".join(names) + ")"


def sittings_seconds(sittings: list[dict], steps: int) -> tuple[float, bool]:
    """Pretraining seconds summed over the sittings of a run that took ``steps`` steps, and whether
    that is an estimate: a sitting killed outright (no record) leaves steps no sitting timed, counted
    at the timed steps' pace."""
    seconds = sum(x["seconds"] for x in sittings)
    timed = sum(x["to_step"] - x["from_step"] for x in sittings)
    if 0 < timed < steps:
        return seconds * steps / timed, True
    return seconds, False


# ---------------------------------------------------------------------------------------------
# Evaluations


def source_of(method: str, seed: int, args: argparse.Namespace, pre: dict | None) -> tuple[str, str]:
    """(source, init) of the protocols: the pretrained run, or the random-init architecture recipe."""
    if method == RANDOM:
        arch = args.out / "random_arch.yaml"
        if not arch.exists():
            arch.parent.mkdir(parents=True, exist_ok=True)
            arch.write_text(f"method: {RANDOM_ARCH}\n")
        return str(arch), "random"
    return pre["run"], "pretrained"


def _encoder_spec(method: str) -> Any:
    """What decides a random-init encoder's features: the encoder spec after the common-encoder
    overrides (less ``mode``, which only changes masked inputs), or the whole model for a non-ViT."""
    preset = method + SUFFIX
    r = resolve({"method": preset}, overrides=encoder_overrides(method, resolve({"method": preset})))
    enc = r.model.get("encoder")
    return {k: v for k, v in enc.items() if k != "mode"} if isinstance(enc, dict) else r.model


def own_architecture(method: str) -> bool:
    """True when METHOD's encoder at random init is not the ``random`` row's (another init scheme,
    positional embedding or model): its own random-init baseline is then evaluated as well."""
    return method != RANDOM and _encoder_spec(method) != _encoder_spec(RANDOM_ARCH[: -len(SUFFIX)])


def arch_recipe(method: str, args: argparse.Namespace) -> str:
    """A recipe file: METHOD's tiny preset with the common-encoder overrides (its architecture)."""
    import yaml

    preset = method + SUFFIX
    path = args.out / f"random_arch_{method}.yaml"
    if not path.exists():
        raw = apply_overrides({"method": preset}, encoder_overrides(method, resolve({"method": preset})))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def jobs(method: str, seed: int, args: argparse.Namespace) -> list[tuple[str, Callable[[dict | None], dict]]]:
    """(file stem, function of the pretraining record) of every evaluation of one (method, seed)."""
    lt, lte = args.limit_train, args.limit_test
    out: list[tuple[str, Callable[[dict | None], dict]]] = []
    skip = {proto for (m, proto) in NOT_APPLICABLE if m == method}
    for f in args.fractions:
        common = {"seed": seed, "labels_fraction": f, "split_seed": seed, "limit_train": lt, "limit_test": lte}

        def knn(pre, common=common):  # noqa: E306
            src, init = source_of(method, seed, args, pre)
            return ev.knn(src, init=init, **common)

        def lp(pre, common=common):
            src, init = source_of(method, seed, args, pre)
            return ev.linprobe(src, init=init, epochs=args.lp_epochs, warmup_epochs=max(1, args.lp_epochs // 9),
                               **common)

        def ft(pre, common=common, f=f):
            src, init = source_of(method, seed, args, pre)
            epochs = ft_epochs(args, f)
            return ev.finetune(src, init=init, epochs=epochs, blr=args.ft_blr, mixup=0.0, cutmix=0.0,
                               warmup_epochs=max(1, epochs // 10) if epochs > 1 else 0.5,
                               crop_scale=FT_CROP, **common)

        out += [(f"{name}_frac{f:g}", fn) for name, fn in (("knn", knn), ("linprobe", lp), ("finetune", ft))
                if name in args.protocols and name not in skip]
        if own_architecture(method):  # the baseline of this architecture: the same protocols at random init
            def rknn(pre, common=common):
                return ev.knn(arch_recipe(method, args), init="random", **common)

            def rlp(pre, common=common):
                return ev.linprobe(arch_recipe(method, args), init="random", epochs=args.lp_epochs,
                                   warmup_epochs=max(1, args.lp_epochs // 9), **common)
            out += [(f"randarch_{name}_frac{f:g}", fn) for name, fn in (("knn", rknn), ("linprobe", rlp))
                    if name in args.protocols]
    if "occlusion" in args.protocols and "occlusion" not in skip and "occlusion" in registry().components["protocols"]:
        def occ(pre):
            src, init = source_of(method, seed, args, pre)
            proto = registry().get("protocols", "occlusion")
            cfg = proto.Config(num_images=args.occlusion_images, seed=seed, ratios=[0.75], transforms=[],
                               plot=str(args.out / "results" / method / f"seed{seed}" / "occlusion.png"))
            return proto(cfg)([src if init == "pretrained" else f"random:{src}"])
        out.append(("occlusion", occ))
    return out


# every method fine-tunes on the same augmentation: RandomResizedCrop at the MAE preset's scale + flip
# of the plain images (a two-view method's views are not used: ``eval_datasets``)
FT_CROP = (0.2, 1.0)


def _crop_before_it_was_recorded(rec: dict) -> list[float] | None:
    """The crop scale a fine-tuning record written before records said so trained with: its
    recipe's, for the plain image sources; None (unknown: compute again) for view wrappers."""
    src = Path(rec.get("source", ""))
    try:
        data = resolve(src / "recipe.yaml" if src.is_dir() else src).data
    except Exception:  # noqa: BLE001 - an unreadable source: compute the record again
        return None
    if data.get("name") not in ("fashion_mnist", "fashion_mnist_captions"):
        return None
    return [float(v) for v in data.get("crop_scale", (0.2, 1.0))]


def expected(stem: str, args: argparse.Namespace) -> dict[str, Any]:
    """What the record ``stem`` must say to be reused: an evaluation computed with other settings
    (another pool or test subset, a fine-tuning run from before the epochs scaled with the pool) is
    computed again; a pretraining of another budget stops the sitting (``run_one``)."""
    if stem == "pretrain":
        return {"budget_images": args.budget}
    if stem == "occlusion":
        return {"num_images": args.occlusion_images}
    protocol, _, frac = stem.removeprefix("randarch_").partition("_frac")
    data = {"train_pool": min(args.limit_train or FULL_POOL, FULL_POOL),
            "num_test": min(args.limit_test or FULL_TEST, FULL_TEST)}
    if protocol == "linprobe":
        return data | {"epochs": args.lp_epochs}
    if protocol == "finetune":
        return data | {"epochs": ft_epochs(args, float(frac)), "crop_scale": list(FT_CROP)}
    return data


def stale(path: Path, rec: dict, args: argparse.Namespace) -> str | None:
    """Why the record at ``path`` does not match this sitting's settings, or None."""
    if "error" in rec:
        return None
    want = expected(path.stem, args)
    if "crop_scale" in want and "crop_scale" not in rec:
        rec = rec | {"crop_scale": _crop_before_it_was_recorded(rec)}
    diff = [f"{k} {rec.get(k)!r} != {v!r}" for k, v in want.items() if rec.get(k) != v]
    return ", ".join(diff) or None


def run_one(path: Path, fn: Callable[[], dict], args: argparse.Namespace, log: list[str]) -> dict:
    """The record at ``path``: read when it exists and matches this sitting's settings (a failed one
    is re-run with --retry-errors), else computed and written; an exception becomes an error record,
    so one broken method does not stop the others."""
    if path.exists():
        rec = json.loads(path.read_text())
        why = stale(path, rec, args)
        if why and path.stem == "pretrain":  # its evaluations come from that run: never replace it silently
            raise SystemExit(f"[compare] {path} was pretrained for another budget ({why}), and the evaluations "
                             f"beside it come from that run. One --out holds one budget: pass another --out, or "
                             f"--budget {rec.get('budget_images')} to go on with this one.")
        if why:
            print(f"[compare] {path}: computed with other settings ({why}): computing it again", flush=True)
        elif not ("error" in rec and args.retry_errors):
            log.append(f"skip {path}")
            return rec
    log.append(f"run  {path}")
    print(f"[compare] {path}", flush=True)
    try:
        rec = fn()
    except Exception as e:  # noqa: BLE001 - recorded and shown in the table
        rec = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(f"[compare]   FAILED: {rec['error']}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, rec)  # a record is whole or absent, even if the sitting is killed
    return rec


def run_method(method: str, seed: int, args: argparse.Namespace, log: list[str]) -> None:
    folder = args.out / "results" / method / f"seed{seed}"
    pre = None
    if method != RANDOM:
        pre = run_one(folder / "pretrain.json", lambda: pretrain(method, seed, args), args, log)
        if "error" in pre:
            return
    for stem, fn in jobs(method, seed, args):
        run_one(folder / f"{stem}.json", lambda fn=fn: fn(pre), args, log)


# ---------------------------------------------------------------------------------------------
# Parallel sittings: one subprocess per (method, seed)

# rough pretraining cost order (this machine's one-thread minutes at 1,024 steps): the dearest units
# start first, so that the last ones to finish are short
COST_ORDER = ("attmask", "ibot", "igpt", "cmae", "bootmae", "macrl", "mfm", "maskfeat", "sdae", "flip", "milan",
              "siamese_mim", "mae", "supmae", RANDOM)


def unit_order(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (method, seed), seed by seed (a sitting stopped early has whole seeds), the dearest
    methods of a seed first; methods not in COST_ORDER keep their order, after the known ones."""
    rank = {m: i for i, m in enumerate(COST_ORDER)}
    by_cost = sorted(methods, key=lambda m: rank.get(m, len(rank)))  # stable: unknown ones keep their order
    return [(m, s) for s in seeds for m in by_cost]


def ready(unit: tuple[str, int], waiting: list[tuple[str, int]], running: set[tuple[str, int]], out: Path) -> bool:
    """A unit may start unless it needs a run that is not there yet: MILAN seed S distils the FLIP run
    of seed S, so it waits while (flip, S) waits, or runs without its pretraining record yet."""
    method, seed = unit
    flip = ("flip", seed)
    if method != "milan" or (flip not in waiting and flip not in running):
        return True
    return flip in running and (out / "results" / "flip" / f"seed{seed}" / "pretrain.json").exists()


def unit_argv(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The command line of one unit: this sitting's settings for one (method, seed), no report."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--methods", method, "--seeds", str(seed),
            "--out", str(args.out), "--budget", str(args.budget), "--lp-epochs", str(args.lp_epochs),
            "--ft-epochs", *map(str, args.ft_epochs), "--ft-blr", repr(args.ft_blr),
            "--occlusion-images", str(args.occlusion_images), "--fractions", *map(repr, args.fractions),
            "--protocols", *args.protocols, "--no-report", "--parallel-of", str(args.jobs)]
    for flag, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test)):
        if value is not None:
            argv += [flag, str(value)]
    for kv in args.set:
        argv += ["--set", kv]
    return argv + (["--quick"] if args.quick else []) + (["--retry-errors"] if args.retry_errors else [])


def run_parallel(methods: list[str], args: argparse.Namespace, log: list[str]) -> None:
    """Run the (method, seed) units in ``--jobs`` subprocesses (each resumable on its own, as a
    serial sitting is), logging to ``OUT/logs/METHOD_seedS.log``. Threads per process: the CPU
    count / jobs unless OMP_NUM_THREADS is set. No unit starts after ``--stop-after`` seconds."""
    import subprocess

    waiting, running = unit_order(methods, args.seeds), {}
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    t0 = time.perf_counter()
    while waiting or running:
        late = args.stop_after is not None and time.perf_counter() - t0 >= args.stop_after
        if late and waiting:
            print(f"[compare] --stop-after {args.stop_after:g} s: not started {waiting}", flush=True)
            log += [f"late {m} seed {s}" for m, s in waiting]
            waiting = []
        while waiting and len(running) < args.jobs:
            unit = next((u for u in waiting if ready(u, waiting, set(running), args.out)), None)
            if unit is None:
                break
            waiting.remove(unit)
            with open(args.out / "logs" / f"{unit[0]}_seed{unit[1]}.log", "ab") as fh:
                running[unit] = (subprocess.Popen(unit_argv(*unit, args), stdout=fh, stderr=subprocess.STDOUT,
                                                  env=env), time.perf_counter())
            print(f"[compare] start {unit[0]} seed {unit[1]} ({len(running)} running, {len(waiting)} waiting)",
                  flush=True)
        time.sleep(0.2)
        for unit, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[unit]
                log.append(f"unit {unit[0]} seed {unit[1]} rc={proc.returncode} {time.perf_counter() - start:.0f} s")
                print(f"[compare] {log[-1]}", flush=True)


# ---------------------------------------------------------------------------------------------
# Table, README, plot


def load_results(out: Path) -> dict[str, dict[int, dict[str, dict]]]:
    res: dict[str, dict[int, dict[str, dict]]] = {}
    for p in sorted((out / "results").glob("*/seed*/*.json")):
        res.setdefault(p.parent.parent.name, {}).setdefault(int(p.parent.name[4:]), {})[p.stem] = json.loads(p.read_text())
    return res


def _occlusion_value(rec: dict) -> float | None:
    try:
        return rec["runs"][0]["masked"]["0.75"]["normalized"]
    except (KeyError, IndexError, TypeError):
        return None


def _value(rec: dict | None, key: str) -> float | None:
    if rec is None or "error" in rec:
        return None
    if key == "occlusion":
        return _occlusion_value(rec)
    v = rec.get(key)
    return None if v is None else float(v)


def _cell(vals: list[float], scale: float = 1.0, digits: int = 1, seeds: int = 0) -> str:
    """mean ± std; ``(n=K)`` when only K of the row's ``seeds`` have this result."""
    if not vals:
        return "–"
    m = statistics.mean(vals) * scale
    n = f" (n={len(vals)})" if len(vals) < seeds else ""
    if len(vals) == 1:
        return f"{m:.{digits}f}{n}"
    return f"{m:.{digits}f} ± {statistics.stdev(vals) * scale:.{digits}f}{n}"


COLUMNS = [("kNN 1%", "knn_frac0.01", "top1", 100), ("kNN 10%", "knn_frac0.1", "top1", 100),
           ("LP 1%", "linprobe_frac0.01", "top1", 100), ("LP 10%", "linprobe_frac0.1", "top1", 100),
           ("FT 1%", "finetune_frac0.01", "top1", 100), ("FT 10%", "finetune_frac0.1", "top1", 100),
           ("occl. inv. 75%", "occlusion", "occlusion", 1)]
# the random init of the row's own architecture (only where it differs from the ``random`` row's)
COLUMNS += [(f"{name} (own arch. random)", f"randarch_{stem}", key, scale)
            for name, stem, key, scale in COLUMNS if stem.startswith(("knn", "linprobe"))]


def _short(override: str) -> str:
    """The value of ``key=value``; a path (MILAN's teacher run) as its last component."""
    v = override.split("=", 1)[1]
    return Path(v).name if "/" in v else v


def table(res: dict, methods: list[str] | None = None) -> str:
    """Markdown, one row per method: cost, then mean ± std over the seeds of every protocol."""
    head = ["method", "seeds", "enc. params (M)", "images seen", "img/s", "minutes", "peak RSS (MiB)"]
    rows = methods or sorted(res, key=lambda k: (k == RANDOM, k))
    # only the protocols that ran for some method (a partial run, e.g. --protocols knn linprobe)
    cols = [c for c in COLUMNS if any(c[1] in s for m in rows for s in res.get(m, {}).values())]
    gpu = any((s.get("pretrain") or {}).get("peak_cuda_mib") for m in rows for s in res.get(m, {}).values())
    head += ["peak GPU (MiB)"] * gpu + [c[0] for c in cols] + ["overrides (encoder, teacher)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = {m: res[m] for m in rows if m in res}
    odd, common = elsewhere(shown), common_host(shown)
    for m in rows:
        seeds = res.get(m, {})
        if not seeds:
            continue
        pres = [s.get("pretrain") for s in seeds.values()]
        ok = [p for p in pres if p and "error" not in p]
        errors = [r["error"] for s in seeds.values() for r in s.values() if "error" in r]
        enc = next((p["encoder_params"] for p in ok if p.get("encoder_params")), None)
        if m == RANDOM:  # the architecture of RANDOM_ARCH, when that method ran
            arch = [s.get("pretrain") or {} for s in res.get(RANDOM_ARCH[: -len(SUFFIX)], {}).values()]
            enc = next((a["encoder_params"] for a in arch if a.get("encoder_params")), None)
        # cost: the seeds pretrained on the common machine where the row has any (n=K says how many)
        cost, mark = cost_records(m, ok, odd, common)[0], " †" * (m in odd)
        mark += " ≈" * any(p.get("seconds_estimated") for p in cost)  # a killed sitting's time, estimated
        n = len(ok) if len(cost) < len(ok) else 0
        row = [m if not errors else f"{m} ({len(errors)} failed)", str(len(seeds)),
               f"{enc / 1e6:.2f}" if enc else "–",
               str(ok[0]["images_seen"]) if ok else ("0" if m == RANDOM else "–"),
               _cell([p["images_per_s"] for p in cost], digits=0, seeds=n) + mark if ok else "–",
               _cell([p["minutes"] for p in cost], digits=2, seeds=n) + mark if ok else ("0" if m == RANDOM else "–"),
               _cell([p["peak_rss_mib"] for p in cost], digits=0, seeds=n) if ok else "–"]
        if gpu:  # a GPU sitting: the peak allocated CUDA memory of the pretraining
            cuda = [p["peak_cuda_mib"] for p in ok if p.get("peak_cuda_mib")]
            row.append(_cell(cuda, digits=0, seeds=len(ok)) if cuda else "–")
        for _, stem, key, scale in cols:
            vals = [v for s in seeds.values() if (v := _value(s.get(stem), key)) is not None]
            na = next((why for (mm, proto), why in NOT_APPLICABLE.items() if mm == m and stem.startswith(proto)), None)
            if stem.startswith("randarch_") and not vals and ok:
                row.append("= random")  # the same architecture as the random row
                continue
            row.append("n/a" if na and not vals else _cell(vals, scale, 1 if scale == 100 else 3, len(seeds)))
        # one cell per distinct set of overrides among the seeds (MILAN's teacher is its seed's FLIP run)
        overs = dict.fromkeys(", ".join(f"`{o.split('=')[0].split('.')[-1]}={_short(o)}`" for o in over)
                              for p in ok if (over := p.get("method_overrides")))
        row.append(" / ".join(overs) or "–")
        lines.append("| " + " | ".join(row) + " |")
    if any(p.get("seconds_estimated") for m in rows for s in res.get(m, {}).values() if (p := s.get("pretrain"))):
        lines.append("\n≈ some pretraining went over sittings one of which was killed before it could record its time: "
                     "those steps are counted at the pace of the timed ones.")
    for machine_ in sorted({h for hs in odd.values() for h in hs}):
        lines.append(f"\n† pretrained (some or all seeds) on {machine_}, not {common}: "
                     f"{', '.join(m for m, hs in odd.items() if machine_ in hs)}; their cost cells show only the "
                     "seeds pretrained on the latter where there are any (n=K), else those of one other machine, "
                     "not comparable.")
    return "\n".join(lines)


def host(pre: dict) -> str | None:
    """The machine a pretraining record ran on, as it names it (its GPU first), or None."""
    if not pre.get("machine"):
        return None
    return (f"{pre['gpu']} GPU + " if pre.get("gpu") else "") + pre["machine"]


def where_pretrained(res: dict) -> str:
    """The machines the shown runs were pretrained on, as their records name them, with the number of
    units that ran at once where a sitting ran several: the report may be made elsewhere."""
    seen = set()
    for by_seed in res.values():
        for r in by_seed.values():
            pre = r.get("pretrain") or {}
            if h := host(pre):
                jobs = pre.get("parallel_jobs") or 1
                seen.add(h + (f", {jobs} (method, seed) units at once" if jobs > 1 else ""))
    return "; ".join(sorted(seen))


def common_host(res: dict) -> str | None:
    """The machine most of the shown pretrainings ran on; None when they all ran on one."""
    hosts = [h for by_seed in res.values() for r in by_seed.values() if (h := host(r.get("pretrain") or {}))]
    return max(sorted(set(hosts)), key=hosts.count) if len(set(hosts)) > 1 else None


def elsewhere(res: dict) -> dict[str, tuple[str, ...]]:
    """{method: the other machines, sorted} for the rows with a pretraining on another machine than
    ``common_host``: their cost is not comparable with the others' (marked †)."""
    common = common_host(res)
    odd: dict[str, set[str]] = {}
    for m, by_seed in res.items():
        for r in by_seed.values():
            if common and (h := host(r.get("pretrain") or {})) and h != common:
                odd.setdefault(m, set()).add(h)
    return {m: tuple(sorted(hs)) for m, hs in odd.items()}


def cost_records(m: str, pres: list[dict], odd: dict[str, tuple[str, ...]],
                 common: str | None) -> tuple[list[dict], bool]:
    """(the pretraining records whose cost a row shows, whether they ran on the common machine): a row
    marked † shows only its seeds on ``common_host`` where it has any, else those of one other machine
    (the one with most of its seeds; on a tie, a CPU beside a CPU common host): minutes of two machines
    are never averaged."""
    here = [p for p in pres if m not in odd or host(p) == common]
    if here or not pres:
        return here, True
    def on_gpu(h: str | None) -> bool:  # host() names a GPU first: "<gpu> GPU + <cpu>"
        return " GPU + " in (h or "")

    hosts = [host(p) for p in pres]
    best = max(sorted(set(hosts), key=str), key=lambda h: (hosts.count(h), on_gpu(h) == on_gpu(common)))
    return [p for p, h in zip(pres, hosts) if h == best], False


def markers(section: str | None = None) -> tuple[str, str]:
    """The README markers of the table: ``<!-- compare:begin -->`` / ``<!-- compare:end -->``, or
    ``<!-- compare:SECTION:begin -->`` / ``...:end -->`` for another table of the same README."""
    return (BEGIN, END) if section is None else (f"<!-- compare:{section}:begin -->", f"<!-- compare:{section}:end -->")


def write_readme(readme: Path, md: str, header: str, section: str | None = None) -> None:
    """Replace the text between the markers of ``section`` (appended with them when absent)."""
    begin, end = markers(section)
    block = f"{begin}\n{header}\n\n{md}\n{end}"
    text = readme.read_text() if readme.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    readme.write_text(text)


def plot(res: dict, path: Path, stems: str | list[str] = "linprobe_frac0.1", methods: list[str] | None = None,
         title: str = "") -> Path | None:
    """Accuracy vs pretraining minutes, one marker per method and one panel per ``stems`` entry
    (e.g. linear probe and fine-tuning at 10%): mean over seeds, a bar of ± one std where there
    are several, random init's mean as a dashed line. None (nothing written) when no stem has results."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    shown = {m: res[m] for m in (methods or res) if m in res}
    odd, common = elsewhere(shown), common_host(shown)
    panels = []  # (stem, [(method, minutes or None: cost from another machine only, mean %, std %)])
    for stem in [stems] if isinstance(stems, str) else stems:
        points = []
        for m in methods or sorted(res, key=lambda k: (k == RANDOM, k)):
            seeds = res[m].values()
            acc = [100 * v for s in seeds if (v := _value(s.get(stem), "top1")) is not None]
            pres = [s["pretrain"] for s in seeds if "pretrain" in s and "error" not in s["pretrain"]]
            cost, on_common = cost_records(m, pres, odd, common)  # the table's cost seeds
            mins = [p["minutes"] for p in cost]
            if acc:
                points.append((m, None if not on_common else statistics.mean(mins) if mins else 0.0,
                               statistics.mean(acc),
                               statistics.stdev(acc) if len(acc) > 1 else 0.0, len(acc)))
        if points:
            panels.append((stem, points))
    if not panels:  # nothing of these protocols among the results: no empty picture
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    markers = "os^vD<>pPXh*8d"
    order = list(dict.fromkeys(m for _, points in panels for m, *_ in points))  # one style per method
    # where rows average different numbers of seeds, each label says its own (n=K)
    mixed_n = len({n for _, points in panels for m, *_, n in points if m != RANDOM}) > 1
    labels = []  # the methods' names beside their markers, spread apart once the layout is known
    for ax, (stem, points) in zip(axes[0], panels):
        for m, x, y, sd, n in points:
            i = order.index(m)
            name = m + f" (n={n})" * mixed_n
            if m == RANDOM:
                ax.axhline(y, color="grey", ls="--", lw=1, label="random init (mean)")
            if x is None:  # pretrained on another machine only: its minutes would stretch the axis
                ax.axhline(y, color=plt.cm.tab20(i % 20), ls=":", lw=1.2, label=f"{name} † (other machine)")
                labels.append(ax.annotate(f"{name} †", (1.0, y), xycoords=("axes fraction", "data"),
                                          xytext=(-30, 3), textcoords="offset points", fontsize=7, ha="right"))
                continue
            ax.errorbar([x], [y], yerr=[sd] if sd else None, fmt=markers[i % len(markers)], ms=7, capsize=3,
                        color=plt.cm.tab20(i % 20), label="_random" if m == RANDOM else name)  # its line is in the legend
            labels.append(ax.annotate(name + " †" * (m in odd), (x, y), textcoords="offset points", xytext=(5, 3),
                                      fontsize=7))
        protocol, _, frac = stem.partition("_frac")
        name = {"linprobe": "linear probe", "finetune": "fine-tuning", "knn": "k-NN"}.get(protocol, protocol)
        ax.set_title(f"{name}, {float(frac):.0%} labels" if frac else name, fontsize=9)
        ax.set_xlabel("pretraining minutes (this machine)")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2)
    if odd:
        title += ("\n" if title else "") + (f"† pretrained on another machine (minutes not comparable; a dotted line "
                                             f"where no seed ran on this one): {', '.join(sorted(odd))}")
    rect = None
    if title:  # wrapped to the figure's width (≈ 15 characters of 7-pt text per inch), panels below it
        text = "\n".join(textwrap.fill(line, int(15 * fig.get_figwidth())) for line in title.splitlines())
        fig.suptitle(text, fontsize=7)
        rect = (0, 0, 1, 1 - 0.026 * (text.count("\n") + 1))
    fig.tight_layout(rect=rect)  # the panels' final size, so the labels are spread where they will be drawn
    spread_labels(fig, labels)
    return save_figure(fig, path, dpi=120, rect=rect)


def spread_labels(fig: Any, labels: list) -> None:
    """Move point labels to the marker's other side or up or down, a line at a time, until none
    overlaps another in its panel.

    Several methods cost about the same minutes and score within a point, so their names would print
    over each other. Labels are placed top to bottom, each at the nearest free place (its own side
    first); one with no free place within four lines stays put."""
    renderer = fig.canvas.get_renderer()  # the layout is done: text extents need no draw
    placed: dict[Any, list] = {}
    for label in sorted(labels, key=lambda a: -a.xy[1]):
        boxes = placed.setdefault(label.axes, [])
        (x0, y0), ha = label.xyann, label.get_ha()  # offset in points from the marker
        sides = [(x0, ha)] + [(-x0, "right")] * (ha == "left")  # a label by the axis edge keeps its side
        line = label.get_window_extent(renderer).height * 72 / fig.dpi
        for k in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            if any(_free(label, (x, y0 + k * line), side, boxes, renderer) for x, side in sides):
                break
        else:
            _free(label, (x0, y0), ha, [], renderer)
        boxes.append(label.get_window_extent(renderer))


def _free(label: Any, offset: tuple[float, float], ha: str, boxes: list, renderer: Any) -> bool:
    """Put ``label`` at ``offset`` (points) aligned ``ha``; whether it then overlaps none of ``boxes``."""
    label.xyann = offset
    label.set_ha(ha)
    return not any(label.get_window_extent(renderer).overlaps(b) for b in boxes)


# ---------------------------------------------------------------------------------------------


FULL_POOL = 60_000  # Fashion-MNIST's training set: the pool the --ft-epochs are meant for
FULL_TEST = 10_000  # its test set


def ft_epochs(args: argparse.Namespace, fraction: float) -> int:
    """Fine-tuning epochs at a label fraction: ``--ft-epochs`` are for the full 60,000-image pool; a
    smaller ``--limit-train`` pool scales them up by 60000 / pool, so that fine-tuning takes about
    the same number of steps (at pool 10,000 and 1%, 30 epochs of 100 images would be 30 steps of
    batch 64, near chance for every method)."""
    epochs = args.ft_epochs[0 if fraction < 0.05 else 1]
    if args.quick:
        return epochs  # a smoke test: as few steps as it takes
    pool = min(args.limit_train or FULL_POOL, FULL_POOL)
    return max(1, round(epochs * FULL_POOL / pool))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=None, help="default: every installed method + random")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=None, help="pretraining images seen (default 240000; quick: 64)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README whose marked section is regenerated")
    p.add_argument("--limit-train", type=int, default=None, help="labelled pool: the first N training items")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--lp-epochs", type=int, default=90)
    p.add_argument("--ft-epochs", type=int, nargs=2, default=[30, 5], help="fine-tuning epochs at 1%% and 10%% of the full 60,000-image pool (scaled up for a smaller --limit-train)")
    p.add_argument("--ft-blr", type=float, default=5e-3)
    p.add_argument("--occlusion-images", type=int, default=512)
    p.add_argument("--plot", type=Path, default=None, help="the PNG (default OUT/compare.png)")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="label fractions")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--all-methods", action="store_true", help="also the EXCLUDED methods that have a tiny Fashion-MNIST preset (ttt)")
    p.add_argument("--retry-errors", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: the table, README section and plot from the results already in --out")
    p.add_argument("--quick", action="store_true", help="tiny budget and eval subsets: a smoke test")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra pretraining override for every method, recorded (e.g. train.compile=false)")
    p.add_argument("--jobs", type=int, default=1, help="(method, seed) units run at once, one subprocess each")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="with --jobs: start no unit after this many seconds (a sitting that fits a lease)")
    p.add_argument("--section", default=None, metavar="NAME",
                   help="regenerate the README table between <!-- compare:NAME:begin/end --> instead of the main one")
    p.add_argument("--no-report", action="store_true", help="compute only: no table, README section or plot")
    p.add_argument("--parallel-of", type=int, default=1, help=argparse.SUPPRESS)  # recorded: units run at once
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.quick:
        args.budget = args.budget or 64
        args.limit_train, args.limit_test = args.limit_train or 500, args.limit_test or 100
        args.lp_epochs, args.ft_epochs, args.occlusion_images = 3, [1, 1], 32
    args.budget = args.budget or 240_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    installed = discover(all_methods=True)
    methods = args.methods or discover(args.all_methods)
    unknown = [m for m in methods if m not in installed]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; installed: {installed}")
    if "milan" in methods and "flip" in methods and methods.index("milan") < methods.index("flip"):
        methods = [m for m in methods if m != "flip"]
        methods.insert(methods.index("milan"), "flip")  # MILAN's teacher is this comparison's FLIP run
    args.out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    t0 = time.perf_counter()
    if args.jobs > 1 and not args.report_only:
        run_parallel(methods, args, log)
    else:
        for m in methods if not args.report_only else []:
            for s in args.seeds:
                run_method(m, s, args, log)
    if args.no_report:
        return 0
    def asked(stem: str, rec: dict, m: str, s: int) -> bool:
        """Pretraining or a protocol of --protocols, computed with this sitting's settings."""
        wanted = stem == "pretrain" or stem.removeprefix("randarch_").split("_frac")[0] in args.protocols
        return wanted and not stale(args.out / "results" / m / f"seed{s}" / f"{stem}.json", rec, args)

    def same_budget(m: str, s: int, r: dict) -> bool:
        """False (with a warning) for a (method, seed) pretrained for another budget: none of it is shown."""
        pre = r.get("pretrain")
        why = pre is not None and stale(args.out / "results" / m / f"seed{s}" / "pretrain.json", pre, args)
        if why:
            print(f"[compare] not shown: {m} seed {s}, pretrained for another budget ({why})", flush=True)
        return not why

    res = {m: kept for m, by_seed in load_results(args.out).items()  # only the methods, seeds and protocols asked for
           if m in methods and (kept := {s: {k: v for k, v in r.items() if asked(k, v, m, s)} for s, r in by_seed.items()
                        if s in args.seeds and same_budget(m, s, r)})}
    md = table(res, [m for m in methods if m in res])
    full = args.budget >= 240_000 and args.limit_train is None and args.limit_test is None and len(args.seeds) >= 3
    scale = "SMOKE-SCALE (--quick)" if args.quick else ("full" if full else "REDUCED (budget, seeds or eval subsets)")
    loads = [x for m in methods for s in res.get(m, {}).values()
             for x in (s.get("pretrain") or {}).get("load_avg_1min") or [] if x is not None]
    load = f"; 1-min load average during pretraining {min(loads):g}-{max(loads):g}" if loads else ""
    where = where_pretrained(res) or machine()
    header = (f"Fashion-MNIST test top-1 (%), mean ± std over seeds {args.seeds} ({scale} run: pretraining budget "
              f"{args.budget} images seen; labelled pool {args.limit_train or 60000}, test items "
              f"{args.limit_test or 10000}). {where}{load}. Generated by `examples/compare_methods.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`.")
    header_short = f"{args.budget} images seen, seeds {args.seeds}, {where}"
    (args.out / "table.md").write_text(header + "\n\n" + md + "\n")
    write_readme(args.readme, md, header, args.section)
    # the plot: linear probe and fine-tuning at 10% (or the largest fraction) where this call covers them
    frac = 0.1 if 0.1 in args.fractions else args.fractions[-1]
    covered = [p for p in ("linprobe", "finetune") if p in args.protocols] or (
        ["knn"] if "knn" in args.protocols else [])
    stems = [f"{p}_frac{frac:g}" for p in covered]
    png = plot(res, args.plot or args.out / "compare.png", stems, [m for m in methods if m in res], header_short)
    (args.out / "log.txt").write_text("\n".join(log) + "\n")
    print(header + "\n\n" + md)
    ran = sum(1 for x in log if x.startswith("run"))
    shown = f"plot {png}" if png else f"no plot (no {' / '.join(stems) or 'plotted protocol'} results)"
    print(f"[compare] {ran} computed, {len(log) - ran} skipped, {time.perf_counter() - t0:.0f} s; {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
