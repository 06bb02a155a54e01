"""The ``mim`` command line: train, plugins, visualize."""
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

    model = load(args.checkpoint)
    recipe = model.recipe
    dataset = build_dataset(recipe, train=False, eval_split=True)
    batch = collate([dataset[i] for i in range(min(args.num, len(dataset)))])
    batch.pop("_skipped", None)
    vis_name = getattr(getattr(model, "target", None), "visualizer", None)
    if vis_name is None:
        raise MimkitError("this model's target registers no visualizer")
    vis = registry().get("visualizers", vis_name)()
    with torch.no_grad():
        out = vis(model, batch, args.out, mean=dataset.mean, std=dataset.std, seed=args.seed, title=str(args.checkpoint))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mim", description="mimkit: masked modeling for images, video and audio")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="pretrain a recipe (run under `accelerate launch` for several processes)")
    p.add_argument("recipe", help="recipe YAML file")
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
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except MimkitError as exc:
        print(f"mim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

