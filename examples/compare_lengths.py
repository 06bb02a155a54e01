"""Accuracy against pretraining length: several budgets of ``compare_methods.py`` side by side.

Each ``--outs`` folder is one ``compare_methods.py --out`` (that script keeps one pretraining budget
per folder). This script computes nothing: it reads the records, checks that every folder evaluated
the same way (labelled pool, test subset, epochs), and writes a markdown table and a plot of each
protocol's top-1 against the images seen in pretraining, beside random init of the same seeds.
It answers the question the one-budget table cannot: from what length on does pretraining help?

    .venv/bin/python examples/compare_lengths.py --outs runs/compare_med runs/compare_med/len/b32768 \\
        runs/compare_med/len/b131072 --methods mae --plot docs/compare_lengths.png

``--paired mae`` adds the per-seed differences to MAE of the same seed and length.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

from mimkit.viz import pyplot, save_figure

HERE = Path(__file__).resolve().parent
DEFAULT_STEMS = ("finetune_frac0.01", "finetune_frac0.1", "linprobe_frac0.1", "knn_frac0.1")
SETTINGS = ("train_pool", "num_test", "epochs", "crop_scale")  # what must agree across budgets


def _compare_methods() -> Any:
    """The sibling script as a module (its record reader, names and cell format)."""
    spec = importlib.util.spec_from_file_location("compare_methods", HERE / "compare_methods.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cm = _compare_methods()


def label(stem: str) -> str:
    """'FT 10%' for ``finetune_frac0.1``: the column names of the one-budget table."""
    return next((name for name, s, _, _ in cm.COLUMNS if s == stem), stem)


def collect(outs: list[Path], methods: list[str] | None, seeds: list[int], stems: list[str]) -> dict[str, Any]:
    """{'random': {seed: {stem: top1}}, 'runs': [(method, images, steps, minutes, {seed: {stem: top1}})]}.

    Raises SystemExit naming the folders when a folder mixes budgets or two folders evaluated a
    protocol differently (then the lengths are not comparable)."""
    random: dict[int, dict[str, float]] = {}
    runs: list[tuple[str, int, int, float, dict[int, dict[str, float]]]] = []
    seen: dict[str, tuple[dict, Path]] = {}  # stem -> (settings, the record they came from)
    for out in outs:
        if not (out / "results").is_dir():
            raise SystemExit(f"{out}: no results/ folder (is it a compare_methods.py --out?)")
        res = cm.load_results(out)
        for m, by_seed in sorted(res.items()):
            if m != cm.RANDOM and methods is not None and m not in methods:
                continue
            budgets = {}
            accs: dict[int, dict[str, float]] = {}
            for s, recs in by_seed.items():
                if s not in seeds:
                    continue
                for stem in stems:
                    rec = recs.get(stem)
                    if rec is None or "error" in rec:
                        continue
                    path = out / "results" / m / f"seed{s}" / f"{stem}.json"
                    mine = {k: rec.get(k) for k in SETTINGS}
                    if stem.startswith("finetune") and mine["crop_scale"] is None:  # a record from before it said
                        mine["crop_scale"] = cm._crop_before_it_was_recorded(rec)
                    first = seen.setdefault(stem, (mine, path))
                    if first[0] != mine:
                        diff = ", ".join(f"{k} {first[0][k]!r} vs {mine[k]!r}" for k in SETTINGS
                                         if first[0][k] != mine[k])
                        raise SystemExit(f"{first[1]} and {path} evaluated {stem} differently ({diff}): "
                                         f"lengths are comparable only under the same evaluation")
                    accs.setdefault(s, {})[stem] = 100 * float(rec["top1"])
                pre = recs.get("pretrain")
                if m != cm.RANDOM and pre and "error" not in pre and s in accs:
                    budgets[s] = (int(pre["images_seen"]), int(pre["steps"]), float(pre["minutes"]))
            if m == cm.RANDOM:  # the same computation in every folder: the first folder's record is kept
                for s, a in accs.items():
                    for stem, v in a.items():
                        random.setdefault(s, {}).setdefault(stem, v)
                continue
            accs = {s: a for s, a in accs.items() if s in budgets}  # an evaluation needs its pretraining record
            if not accs:
                continue
            if len({b[0] for b in budgets.values()}) > 1:
                raise SystemExit(f"{out}: {m} was pretrained for several budgets "
                                 f"({sorted({b[0] for b in budgets.values()})}); one folder holds one budget")
            images, steps, _ = next(iter(budgets.values()))
            runs.append((m, images, steps, statistics.mean(b[2] for b in budgets.values()), accs))
    runs.sort(key=lambda r: (r[0], r[1]))
    return {"random": random, "runs": runs}


def table(data: dict[str, Any], stems: list[str]) -> str:
    """Rows: random init, then every (method, budget) by length; a cell is mean ± std over seeds and
    ``[k/n]``: in k of the n seeds that random init also has, the run beats random init of its seed."""
    random = data["random"]
    head = ["method", "images seen", "steps", "minutes", "seeds"] + [label(s) for s in stems]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if random:
        cells = [cm._cell([a[st] for a in random.values() if st in a]) for st in stems]
        lines.append(f"| random init | 0 | 0 | 0 | {len(random)} | " + " | ".join(cells) + " |")
    for m, images, steps, minutes, accs in data["runs"]:
        cells = []
        for st in stems:
            vals = [a[st] for a in accs.values() if st in a]
            pairs = [(a[st], random[s][st]) for s, a in accs.items() if st in a and st in random.get(s, {})]
            above = f" [{sum(x > r for x, r in pairs)}/{len(pairs)}]" if pairs else ""
            cells.append(cm._cell(vals) + above)
        lines.append(f"| {m} | {images} | {steps} | {minutes:.1f} | {len(accs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(data: dict[str, Any], stems: list[str], ref: str) -> str:
    """Each method's top-1 minus ``ref``'s, seed by seed, at the same length.

    Two runs of one seed share the labelled pool, the test subset and the evaluation's randomness, so
    their difference is free of the seed-to-seed spread that the mean ± std table carries. A cell
    lists the differences in seed order, then their mean and in how many seeds the method is above."""
    refs = {images: accs for m, images, _, _, accs in data["runs"] if m == ref}
    if not refs:
        found = sorted({r[0] for r in data["runs"]})
        raise SystemExit(f"--paired {ref}: no {ref} runs to compare with (runs found: {found})")
    head = ["method", "images seen", "seeds"] + [f"{label(s)} − {ref}" for s in stems]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, images, _, _, accs in data["runs"]:
        base = refs.get(images)
        if m == ref or base is None:
            continue
        seeds = sorted(s for s in accs if s in base)
        if not seeds:
            continue
        cells = []
        for st in stems:
            d = [accs[s][st] - base[s][st] for s in seeds if st in accs[s] and st in base[s]]
            cell = " / ".join(f"{x:+.1f}" for x in d) or "–"
            if len(d) > 1:
                cell += f" (mean {statistics.mean(d):+.1f}, above in {sum(x > 0 for x in d)}/{len(d)})"
            cells.append(cell)
        lines.append(f"| {m} | {images} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict[str, Any], stems: list[str], path: Path, title: str = "") -> Path | None:
    """One panel per protocol: top-1 (mean ± std over seeds) against pretraining images seen (log
    axis), one line per method, random init's mean ± std as a dashed line in a grey band, and where
    a method has its own architecture's random-init records (``randarch_*``), their mean dotted in its colour."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    if not data["runs"]:
        return None
    cols = min(2, len(stems))
    rows = -(-len(stems) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(stems):]:
        ax.set_visible(False)
    methods = list(dict.fromkeys(r[0] for r in data["runs"]))
    own_drawn = False
    for ax, st in zip(axes.flat, stems):
        rand = [a[st] for a in data["random"].values() if st in a]
        if rand:
            mu, sd = statistics.mean(rand), statistics.stdev(rand) if len(rand) > 1 else 0.0
            ax.axhline(mu, color="grey", ls="--", lw=1, label="random init")
            ax.axhspan(mu - sd, mu + sd, color="grey", alpha=0.15, lw=0)
        for i, m in enumerate(methods):
            pts = [(images, [a[st] for a in accs.values() if st in a]) for mm, images, _, _, accs in data["runs"]
                   if mm == m]
            pts = [(x, v) for x, v in pts if v]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [statistics.mean(v) for _, v in pts]
            es = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
            color = plt.cm.tab10(i % 10)
            ax.errorbar(xs, ys, yerr=es, marker="os^vD<>pPX"[i % 10], capsize=3, color=color, label=m)
            own = [a[f"randarch_{st}"] for mm, _, _, _, accs in data["runs"] if mm == m
                   for a in accs.values() if f"randarch_{st}" in a]
            if own:  # the method's own architecture at random init (frozen protocols only)
                ax.axhline(statistics.mean(own), color=color, ls=":", lw=1)
                own_drawn = True
        ax.set_xscale("log", base=2)
        ax.set_title(label(st), fontsize=9)
        ax.set_xlabel("pretraining images seen")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds", fontsize=8)
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    rect = None
    if len(methods) <= 4:
        axes[0][0].legend(fontsize=7)
    else:  # many lines: one legend for the figure, in a strip below the panels
        ncol = min(len(names), 5)
        strip = 0.3 * -(-len(names) // ncol) / fig.get_figheight()  # 0.3 in per legend row
        fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        rect = (0, strip, 1, 1)
    if own_drawn:
        title = "; ".join(filter(None, [title, "dotted: the method's own architecture at random init, "
                                                "where it differs from random init's"]))
    if title:
        fig.suptitle(title, fontsize=7)
    return save_figure(fig, path, dpi=120, rect=rect)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outs", type=Path, nargs="+", required=True,
                   help="compare_methods.py --out folders, one per budget")
    p.add_argument("--methods", nargs="+", default=None, help="default: every method found")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--stems", nargs="+", default=list(DEFAULT_STEMS), help="records to show, e.g. finetune_frac0.1")
    p.add_argument("--plot", type=Path, default=None, help="the PNG (default: none)")
    p.add_argument("--plot-stems", nargs="+", default=None, help="the records to plot (default: --stems)")
    p.add_argument("--table", type=Path, default=None, help="also write the markdown table(s) here")
    p.add_argument("--paired", metavar="METHOD", default=None,
                   help="also tabulate every method's per-seed top-1 minus METHOD's at the same length")
    args = p.parse_args(argv)
    plotted = args.plot_stems or args.stems
    wanted = args.stems + plotted + [f"randarch_{s}" for s in plotted if not s.startswith("randarch_")]
    data = collect(args.outs, args.methods, args.seeds, list(dict.fromkeys(wanted)))
    if not data["runs"]:
        raise SystemExit(f"no pretrained runs with {args.stems} results for seeds {args.seeds} in {args.outs}")
    md = table(data, args.stems)
    if args.paired:
        md += "\n\n" + paired(data, args.stems, args.paired)
    print(md)
    if args.table:
        args.table.write_text(md + "\n")
    if args.plot:
        title = f"seeds {args.seeds}, {cm.machine()}"
        print(f"[lengths] plot {plot(data, plotted, args.plot, title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
