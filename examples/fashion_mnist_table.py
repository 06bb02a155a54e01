"""The README table: tiny MAE on Fashion-MNIST vs random init, at 1% and 10% of the labels.

    .venv/bin/python examples/fashion_mnist_table.py              # the real table (~1 h+ on 2 CPU cores)
    .venv/bin/python examples/fashion_mnist_table.py --quick      # a smoke run of the whole pipeline (~2 min)

Steps: (1) pretrain ``mae_tiny_fashion_mnist`` once into ``RUNS/table_pretrain`` (reused when a
complete checkpoint exists); (2) for each seed, the class-balanced 1% / 10% splits
(split seed = seed); (3) k-NN (k=20, T=0.07) and the linear probe on frozen [CLS] features,
extracted once per model for the union of the needed training items plus the test set;
(4) fine-tuning (MAE recipe) from the pretrained encoder and from a random init;
(5) mean +- std over the seeds, printed as Markdown and written to ``RUNS/table.md`` with
every single result (split hashes included) in ``RUNS/table.json``.

The random-init baseline is a fresh model of the same architecture with the seed's weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

import mimkit
from mimkit import checkpoint as ckpt
from mimkit import evaluate as ev

HERE = Path(__file__).resolve().parent


def pretrain(runs: Path, quick: bool, epochs: float = 3.0) -> Path:
    """The pretrained run folder, trained now unless a complete checkpoint is cached."""
    name = "table_pretrain_quick" if quick else "table_pretrain"
    run = runs / name
    if ckpt.latest(run / "checkpoints") is not None:
        print(f"[pretrain] reusing {run}")
        return run
    overrides = [f"name={name}", f"output_dir={runs}", "train.progress=false", f"train.epochs={epochs}"]
    if quick:
        overrides += ["data.limit=256", "train.batch_size=64", "train.max_steps=4", "train.visualize=false"]
    t0 = time.perf_counter()
    mimkit.train(HERE / "fashion_mnist_mae.yaml", overrides=overrides, overwrite=True)
    print(f"[pretrain] {run} in {time.perf_counter() - t0:.0f} s")
    return run


def frozen_results(model, seed: int, init: str, splits: dict, train_ds, test_ds, num_classes: int,
                   args) -> list[dict]:
    """k-NN and linear-probe records of one model for every fraction's split of ``seed``."""
    needed = np.unique(np.concatenate([splits[(seed, f)] for f in args.fractions]))
    acc = ev.make_accelerator()
    t0 = time.perf_counter()
    tr_f, tr_y = ev.extract_features(model, Subset(train_ds, needed.tolist()), "cls", 256, acc)  # (U, D)
    te_f, te_y = ev.extract_features(model, test_ds, "cls", 256, acc)  # (M, D)
    row_of = {int(i): r for r, i in enumerate(needed)}
    print(f"  features of {len(needed)} + {len(te_y)} images in {time.perf_counter() - t0:.0f} s")
    out = []
    for f in args.fractions:
        idx = splits[(seed, f)]
        rows = torch.tensor([row_of[int(i)] for i in idx])
        x, y = tr_f[rows], tr_y[rows]
        base = {"init": init, "seed": seed, "labels_fraction": f, "split_seed": seed, "num_train": len(idx),
                "indices_sha256": ev.indices_hash(idx), "num_test": len(te_y)}
        scores = ev.knn_predict(x, y, te_f, num_classes, k=20, temperature=0.07)
        out.append({**base, "protocol": "knn", **ev.topk_accuracy(scores, te_y)})
        probe = ev.train_linear_probe(x, y, num_classes, epochs=args.lp_epochs, batch_size=256, blr=0.1,
                                      warmup_epochs=max(1, args.lp_epochs // 9), seed=seed)
        with torch.no_grad():
            out.append({**base, "protocol": "linprobe", **ev.topk_accuracy(probe(te_f), te_y)})
        for r in out[-2:]:
            print(f"  {r['protocol']:8s} {init:10s} {f:>5} seed {seed}: top-1 {r['top1']:.4f}")
    return out


def table(records: list[dict], fractions: list[float]) -> str:
    """Markdown: one row per (protocol, init), one column per fraction, mean +- std of top-1 (%)."""
    lines = ["| protocol | init | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |",
             "|---|---|" + "---|" * len(fractions)]
    for proto in ("knn", "linprobe", "finetune"):
        for init in ("pretrained", "random"):
            cells = []
            for f in fractions:
                vals = [100 * r["top1"] for r in records
                        if r["protocol"] == proto and r["init"] == init and r["labels_fraction"] == f]
                if not vals:
                    cells.append("-")
                    continue
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f} (n={len(vals)})")
            lines.append(f"| {proto} | {'MAE' if init == 'pretrained' else 'random init'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the pretraining run and results go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=float, default=3.0, help="the fixed pretraining budget (~8 min here)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--lp-epochs", type=int, default=90)
    p.add_argument("--ft-epochs", type=int, nargs="+", default=[30, 5],
                   help="fine-tuning epochs per fraction (more for the smaller split: similar step counts)")
    p.add_argument("--ft-blr", type=float, default=5e-3,
                   help="fine-tuning base lr (per 256); MAE's 5e-4 is for 100 ImageNet epochs, far more steps")
    p.add_argument("--ft-mixup", type=float, default=0.0,
                   help="mixup and cutmix alpha; 0 for a few hundred labels (MAE uses 0.8/1.0 on ImageNet)")
    p.add_argument("--limit-train", type=int, default=None, help="the labelled pool: first N training items")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny everything: checks that the pipeline runs")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.lp_epochs, args.ft_epochs = args.seeds[:2], 5, [1] * len(args.fractions)
        args.limit_train, args.limit_test = args.limit_train or 500, args.limit_test or 100
    if len(args.ft_epochs) != len(args.fractions):
        p.error("--ft-epochs needs one value per fraction")
    args.runs.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    run = pretrain(args.runs, args.quick, args.pretrain_epochs)
    pretrained = ev.load_source(run)
    train_ds, test_ds = ev.eval_datasets(pretrained.recipe)
    pool = len(train_ds) if args.limit_train is None else min(args.limit_train, len(train_ds))
    labels = ev.dataset_labels(train_ds)[:pool]
    test_ds = ev.head_subset(test_ds, args.limit_test)
    num_classes = len(train_ds.classes)
    splits = {(s, f): ev.class_balanced_split(labels, f, s) for s in args.seeds for f in args.fractions}

    records: list[dict] = []
    for s in args.seeds:
        print(f"[frozen] seed {s}")
        records += frozen_results(pretrained, s, "pretrained", splits, train_ds, test_ds, num_classes, args)
        records += frozen_results(ev.load_source(run, init="random", seed=s), s, "random", splits, train_ds,
                                  test_ds, num_classes, args)
    if not args.skip_finetune:
        for f, epochs in zip(args.fractions, args.ft_epochs):
            for s in args.seeds:
                for init in ("pretrained", "random"):
                    rec = ev.finetune(run, init=init, seed=s, labels_fraction=f, split_seed=s,
                                      limit_train=args.limit_train, limit_test=args.limit_test, epochs=epochs,
                                      blr=args.ft_blr, mixup=args.ft_mixup, cutmix=args.ft_mixup,
                                      warmup_epochs=max(1, epochs // 10) if epochs > 1 else 0.5)
                    assert rec["indices_sha256"] == ev.indices_hash(splits[(s, f)])  # same split as frozen evals
                    records.append(rec)
                    print(f"  finetune {init:10s} {f:>5} seed {s}: top-1 {rec['top1']:.4f} ({rec['seconds']:.0f} s)")

    md = table(records, args.fractions)
    suffix = "_quick" if args.quick else ""
    (args.runs / f"table{suffix}.json").write_text(json.dumps(records, indent=1))
    header = (f"Fashion-MNIST test top-1 (%), mean ± std over seeds {args.seeds}; "
              f"tiny MAE pretrained in {run}; test items: {len(test_ds)}\n\n")
    (args.runs / f"table{suffix}.md").write_text(header + md + "\n")
    print(header + md)
    print(f"total {time.perf_counter() - t_all:.0f} s; results in {args.runs / f'table{suffix}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
