"""The ``mim`` command line: train, plugins, visualize, eval, export, plot."""
from __future__ import annotations

import argparse
import sys

from .errors import MimkitError


def _cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    run_dir = train(args.recipe, overrides=args.set, resume=args.resume, overwrite=args.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import registry

    reg = registry()
    for p in reg.plugins:
        state = "BROKEN" if p.broken else "ok"
        print(f"{p.name} {p.version} [{state}] ({p.module})")
        if p.broken:
            print(f"    error: {p.error}")
        for kind, names in sorted(p.components.items()):
            print(f"    {kind}: {', '.join(names)}")
    return 1 if args.strict and any(p.broken for p in reg.plugins) else 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    import torch

    from .api import build_dataset, load
    from .data import collate
    from .plugins import registry
    from .viz import visualizer_name

    model = load(args.checkpoint)
    recipe = model.recipe
    dataset = build_dataset(recipe, train=False, eval_split=True)
    batch = collate([dataset[i] for i in range(min(args.num, len(dataset)))])
    batch.pop("_skipped", None)
    vis_name = visualizer_name(model)
    if vis_name is None:
        raise MimkitError(f"{args.checkpoint}: this model names no visualizer (a `visualizer` attribute on it or its target)")
    vis = registry().get("visualizers", vis_name)()
    with torch.no_grad():
        out = vis(model, batch, args.out, mean=dataset.mean, std=dataset.std, seed=args.seed, title=str(args.checkpoint))
    print(f"wrote {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from . import evaluate

    common = dict(init=args.init, seed=args.seed, labels_fraction=args.labels_fraction, split_seed=args.split_seed,
                  limit_train=args.limit_train, limit_test=args.limit_test, val_root=args.val_root)
    out = args.out
    if out is None:
        frac = "" if args.labels_fraction is None else f"_frac{args.labels_fraction:g}"
        src = Path(args.source)
        folder = src / "eval" if src.is_dir() and (src / "checkpoints").is_dir() else Path("eval")
        out = folder / f"{args.protocol}_{args.init}{frac}_seed{args.seed}.json"
    if args.protocol == "knn":
        rec = evaluate.knn(args.source, k=args.k, temperature=args.temperature, pool=args.pool,
                           batch_size=args.batch_size or 256, out=out, **common)
    elif args.protocol == "linprobe":
        rec = evaluate.linprobe(args.source, pool=args.pool, epochs=args.epochs or 90, batch_size=args.batch_size or 256,
                                blr=args.blr if args.blr is not None else 0.1, optimizer=args.optimizer,
                                warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else 10,
                                out=out, **common)
    else:
        rec = evaluate.finetune(args.source, epochs=args.epochs or 100, batch_size=args.batch_size or 64,
                                blr=args.blr if args.blr is not None else 5e-4, layer_decay=args.layer_decay,
                                drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix,
                                smoothing=args.smoothing,
                                warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else 5,
                                out=out, **common)
    print(json.dumps(rec, indent=1))
    print(f"{args.protocol}: top-1 {rec['top1']:.4f}  top-5 {rec['top5']:.4f}  (written to {out})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    info = export(args.source, args.out, args.format)
    print(f"wrote {info['path']} ({info['num_tensors']} tensors, format {info['format']})")
    if args.format == "timm":
        print("load it with:\n  import timm\n  model = " + info["create_model"])
        print("(forward_features equals mimkit's; the default global_pool='token' head-less output equals "
              "model.features(x, 'cls'); global_pool='avg' adds a fresh fc_norm)")
    else:
        print("load it with: mimkit.load(" + repr(info["path"]) + ")")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .viz import loss_curve

    run = Path(args.run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    if not metrics.is_file():
        raise MimkitError(f"no metrics.jsonl in {run}")
    out = Path(args.out) if args.out else metrics.parent / "loss_curve.png"
    path = loss_curve(metrics, out, title=f"{metrics.parent.name}: training loss")
    if path is None:
        raise MimkitError(f"{metrics} holds no loss rows yet")
    print(f"wrote {path}")
    return 0


BUILTIN_EVAL = ("knn", "linprobe", "finetune")


def _protocol_parser(command: str, name: str, cls: type) -> argparse.ArgumentParser:
    """``mim eval NAME`` for a registered protocol: one flag per field of its attrs Config."""
    import attrs

    parser = argparse.ArgumentParser(prog=f"mim {command} {name}", description=(cls.__doc__ or "").strip() or None)
    parser.add_argument("sources", nargs="+", help="run folders, checkpoints or files")
    parser.add_argument("--out", default=None, help=f"result JSON (default SOURCE/eval/{name}.json or eval/{name}.json)")
    for a in attrs.fields(attrs.resolve_types(cls.Config)):
        flag = "--" + a.name.replace("_", "-")
        default = a.default.factory() if isinstance(a.default, attrs.Factory) else a.default  # type: ignore[arg-type]
        choices = getattr(a.validator, "choices", None)
        if a.type is bool:
            parser.add_argument(flag, dest=a.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        else:
            parser.add_argument(flag, dest=a.name, default=None, metavar="VALUE",
                                help=f"{'one of ' + str(list(choices)) + ', ' if choices else ''}default {default!r}"
                                     " (parsed as YAML)")
    return parser


def _run_protocol(command: str, name: str, argv: list[str]) -> int:
    import json
    from pathlib import Path

    import yaml

    from .config import structure
    from .plugins import registry

    cls = registry().get("protocols", name, where=f"mim {command}")
    args = _protocol_parser(command, name, cls).parse_args(argv)
    values = {}
    for key, text in vars(args).items():
        if key in ("sources", "out") or text is None:
            continue
        values[key] = text if isinstance(text, bool) else yaml.safe_load(text)
    config = structure(cls.Config, values, f"{command} {name}")
    record = cls(config)(list(args.sources))
    src = Path(args.sources[0])
    out = Path(args.out) if args.out else (src / "eval" if (src / "checkpoints").is_dir() else Path("eval")) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(record.get("summary") or json.dumps(record, indent=1, default=str))
    print(f"(written to {out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in ("eval", "analyze") and not argv[1].startswith("-") and (
            argv[0] == "analyze" or argv[1] not in BUILTIN_EVAL):
        try:
            return _run_protocol(argv[0], argv[1], argv[2:])
        except MimkitError as exc:
            print(f"mim {argv[0]} {argv[1]}: error: {exc}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="mim", description="mimkit: masked modeling for images, video and audio")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="pretrain a recipe (run under `accelerate launch` for several processes)")
    p.add_argument("recipe", help="recipe YAML file, or the name of a preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, value parsed as YAML (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("plugins", help="list installed plugins, their components, and broken ones")
    p.add_argument("--strict", action="store_true", help="exit 1 when a plugin is broken")
    p.set_defaults(fn=_cmd_plugins)
    p = sub.add_parser("visualize", help="original | masked | reconstruction grid as PNG")
    p.add_argument("checkpoint", help="run folder, checkpoint folder or file")
    p.add_argument("--out", default="reconstructions.png")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_visualize)
    p = sub.add_parser("eval", help="k-NN, linear probe or fine-tuning accuracy of an encoder (JSON result); "
                                    "`mim eval NAME --help` for a protocol a plugin registers")
    p.add_argument("protocol", choices=list(BUILTIN_EVAL))
    p.add_argument("source", help="run folder, checkpoint folder, export .safetensors, official file, "
                                  "or recipe YAML with --init random")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="random: same architecture, fresh weights (the baseline)")
    p.add_argument("--seed", type=int, default=0, help="training / random-init seed")
    p.add_argument("--labels-fraction", type=float, default=None, help="use a class-balanced fraction of the labels")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the labels-fraction split")
    p.add_argument("--limit-train", type=int, default=None, help="only the first N training items")
    p.add_argument("--limit-test", type=int, default=None, help="only the first N test items")
    p.add_argument("--val-root", default=None, help="test folder for image_folder data")
    p.add_argument("--pool", choices=["cls", "mean"], default="cls", help="frozen features: [CLS] or mean of tokens")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--epochs", type=int, default=None, help="linprobe 90, finetune 100")
    p.add_argument("--batch-size", type=int, default=None, help="knn/linprobe 256, finetune 64")
    p.add_argument("--blr", type=float, default=None, help="base lr per 256: linprobe 0.1, finetune 5e-4")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linprobe 10, finetune 5")
    p.add_argument("--optimizer", choices=["sgd", "lars"], default="sgd", help="linear probe optimizer")
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--out", default=None, help="result JSON (default RUN/eval/... or ./eval/...)")
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("export", help="export the encoder for timm, or the full model for mimkit.load")
    p.add_argument("source", help="run folder, checkpoint folder, export or official file")
    p.add_argument("--format", choices=["timm", "full"], default="timm")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(fn=_cmd_export)
    p = sub.add_parser("plot", help="regenerate loss_curve.png from a run's metrics.jsonl")
    p.add_argument("run", help="run folder (or its metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/loss_curve.png)")
    p.set_defaults(fn=_cmd_plot)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except MimkitError as exc:
        print(f"mim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

