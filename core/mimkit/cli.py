"""The ``mim`` command line: train, plugins, visualize, eval, export, plot, shard."""
from __future__ import annotations

import argparse
import sys

from .errors import MimkitError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        from .api import dry_run

        text, params = dry_run(args.recipe, args.set)
        print(text, end="")
        print(f"# parameters: {params['total']:,} ({params['trainable']:,} trainable)")
        return 0
    from .trainer import train

    run_dir = train(args.recipe, overrides=args.set, resume=args.resume, overwrite=args.overwrite,
                    allow_optim_change=args.allow_optim_change)
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

    from .api import build_dataset, held_out_dataset, load
    from .data import collate
    from .plugins import registry
    from .viz import visualizer_name

    model = load(args.checkpoint)
    recipe = model.recipe
    dataset = held_out_dataset(recipe) or build_dataset(recipe, train=False)  # else training images, un-augmented
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


def _cmd_protocols(args: argparse.Namespace) -> int:
    from .plugins import registry

    print(f"mim {args.command} NAME SOURCE... ; registered protocols: {', '.join(registry().names('protocols'))}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    if args.out is not None and args.out_pos is not None and args.out != args.out_pos:
        raise MimkitError(f"two outputs given ({args.out_pos} and --out {args.out}): give one")
    out = args.out or args.out_pos
    if out is None:
        raise MimkitError("name the output: `mim export SOURCE OUT` or --out OUT")
    info = export(args.source, out, args.format)
    if "num_tensors" not in info:  # a plugin's folder format
        print(f"wrote {info['path']} ({info['num_files']} files, format {info['format']}, "
              f"exporter {info['exporter']}: {info['describes']})")
        if info["load_hint"]:
            print("load it with:\n  " + info["load_hint"])
        return 0
    print(f"wrote {info['path']} ({info['num_tensors']} tensors, format {info['format']})")
    if args.format == "timm":
        imports = "import functools, timm, torch" if "functools." in info["create_model"] else "import timm"
        print(f"load it with:\n  {imports}\n  model = " + info["create_model"])
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


def _cmd_shard(args: argparse.Namespace) -> int:
    from .components.shards import write_shards

    info = write_shards(args.folder, args.out, args.shard_size)
    print(f"wrote {info['num_samples']} images in {info['num_shards']} shards of up to {info['shard_size']} into "
          f"{args.out} ({len(info['classes'])} classes); train on them with data: {{name: shards, root: {args.out}}}")
    return 0


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

    from .config import structure, yaml_load
    from .plugins import registry

    cls = registry().get("protocols", name, where=f"mim {command}")
    args = _protocol_parser(command, name, cls).parse_args(argv)
    values = {}
    for key, text in vars(args).items():
        if key in ("sources", "out") or text is None:
            continue
        values[key] = text if isinstance(text, bool) else yaml_load(text, f"--{key.replace('_', '-')}")
    config = structure(cls.Config, values, f"{command} {name}")
    protocol = cls(config)
    record = protocol(list(args.sources))
    src = Path(args.sources[0])
    file_name = protocol.record_name() if hasattr(protocol, "record_name") else f"{name}.json"
    out = Path(args.out) if args.out else (src / "eval" if (src / "checkpoints").is_dir() else Path("eval")) / file_name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    except OSError as exc:
        raise MimkitError(f"cannot write the result {out}: {exc}") from None
    print(record.get("summary") or json.dumps(record, indent=1, default=str))
    print(f"(written to {out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in ("eval", "analyze") and not argv[1].startswith("-"):
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
    p.add_argument("--overwrite", action="store_true",
                   help="empty an existing run folder first (only one holding a mimkit run's meta.json/recipe.yaml)")
    p.add_argument("--allow-optim-change", action="store_true",
                   help="with --resume: let optim.* (lr, schedule, ...) differ from the checkpoint's recipe")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved, validated recipe and the parameter count; touch nothing")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("plugins", help="list installed plugins, their components, and broken ones")
    p.add_argument("--strict", action="store_true", help="exit 1 when a plugin is broken")
    p.set_defaults(fn=_cmd_plugins)
    p = sub.add_parser("visualize", help="original | masked | reconstruction grid as PNG")
    p.add_argument("checkpoint", help="run folder, checkpoint folder or file")
    p.add_argument("--out", default="reconstructions.png")
    p.add_argument("--num", type=_positive_int, default=8, help="images in the grid (>= 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_visualize)
    for command, what in (("eval", "evaluate an encoder (k-NN, linear probe, fine-tuning, plugins' protocols)"),
                          ("analyze", "run a registered analysis protocol")):
        p = sub.add_parser(command, help=f"{what}: `mim {command} NAME SOURCE... [--flags]`, "
                                         f"`mim {command} NAME --help` for a protocol's flags")
        p.add_argument("protocol", nargs="?", help="a registered protocol; installed: run `mim plugins`")
        p.set_defaults(fn=_cmd_protocols)
    p = sub.add_parser("export", help="export the encoder for timm, the full model for mimkit.load, or a "
                                      "plugin's format (hf: a Hugging Face folder)")
    p.add_argument("source", help="run folder, checkpoint folder, export or official file")
    p.add_argument("out_pos", nargs="?", metavar="OUT", help="output: a .safetensors file (timm, full) or a new "
                                                            "folder (a plugin's format such as hf)")
    p.add_argument("--format", default="timm",
                   help="timm | full | a plugin's format: hf (transformers ViTMAEForPreTraining / "
                        "VideoMAEForPreTraining folders, with the mae / videomae plugins); default timm")
    p.add_argument("--out", default=None, help="the output (same as OUT)")
    p.set_defaults(fn=_cmd_export)
    p = sub.add_parser("shard", help="write an image folder (class subfolders -> labels) as tar shards (data.name=shards)")
    p.add_argument("folder", help="image folder: class subfolders, or a flat folder of images")
    p.add_argument("out", help="output folder for shard-NNNNNN.tar and index.json (new or empty)")
    p.add_argument("--shard-size", type=_positive_int, default=1000, help="images per shard (default 1000)")
    p.set_defaults(fn=_cmd_shard)
    p = sub.add_parser("plot", help="regenerate loss_curve.png from a run's metrics.jsonl")
    p.add_argument("run", help="run folder (or its metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/loss_curve.png)")
    p.set_defaults(fn=_cmd_plot)
    args, extra = parser.parse_known_args(argv)
    # `mim export SRC --format hf OUT`: argparse does not give a positional after options to an
    # optional positional already passed over
    if extra and args.command == "export" and args.out_pos is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.out_pos, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except MimkitError as exc:
        print(f"mim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

