"""Pictures a person would rather look at than read: reconstruction grids and loss curves."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any




def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use: slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110,
                rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (creating the folder), close it.

    ``rect`` (left, bottom, right, top in figure fractions) keeps the panels inside it, e.g. to leave
    room for a legend of the whole figure."""
    fig.tight_layout(rect=rect)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def visualizer_name(model: Any) -> str | None:
    """The registered visualizer a model asks for: ``model.visualizer``, else its target's."""
    return getattr(model, "visualizer", None) or getattr(getattr(model, "target", None), "visualizer", None)


def loss_curve(metrics_file: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Plot every logged loss term of ``metrics.jsonl`` against the step."""
    all_rows = []
    for i, line in enumerate(Path(metrics_file).read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:  # a line torn by a kill mid-write
            print(f"{metrics_file}:{i}: skipped an unreadable line (torn write?)", file=sys.stderr)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            all_rows.append(row)
    rows = [r for r in all_rows if isinstance(r.get("loss"), (int, float))]
    knn = [(r["step"], r["knn_top1"]) for r in all_rows if "knn_top1" in r]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if knn:  # the online k-NN probe on a second axis
        ax2 = ax.twinx()
        ax2.plot([k[0] for k in knn], [k[1] for k in knn], "o-", color="tab:green", lw=1, ms=3, label="k-NN top-1")
        ax2.set_ylabel("online k-NN top-1", color="tab:green")
        ax2.set_ylim(0, 1)
    keys = ["loss"] + sorted({k for r in rows for k in r if k.startswith("loss/")})
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.5 if k == "loss" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "training loss", fontsize=9)
    return save_figure(fig, path)
