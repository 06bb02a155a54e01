"""examples/compare_lengths.py: the records of several compare_methods.py folders (one budget each)
side by side, with the seeds that beat random init counted, and a refusal to mix evaluations."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "compare_lengths.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_lengths", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(out: Path, method: str, seed: int, stem: str, rec: dict) -> Path:
    path = out / "results" / method / f"seed{seed}" / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def _eval(top1: float, pool: int = 1000) -> dict:
    return {"top1": top1, "train_pool": pool, "num_test": 100, "epochs": 30, "crop_scale": [0.2, 1.0]}


def _folder(out: Path, images: int, ft: dict[int, float], random: dict[int, float] | None = None) -> None:
    for seed, top1 in ft.items():
        _write(out, "mae", seed, "pretrain", {"images_seen": images, "steps": images // 128, "minutes": images / 8192})
        _write(out, "mae", seed, "finetune_frac0.1", _eval(top1))
    for seed, top1 in (random or {}).items():
        _write(out, "random", seed, "finetune_frac0.1", _eval(top1))


def test_lengths_table_counts_the_seeds_above_random_init_and_plots(tmp_path):
    cl = _module()
    short, long = tmp_path / "short", tmp_path / "long"
    _folder(short, 8192, {0: 0.50, 1: 0.56, 2: 0.62}, random={0: 0.60, 1: 0.64, 2: 0.68})
    _folder(long, 32768, {0: 0.70, 1: 0.60, 2: 0.72})  # random init comes from the other folder
    table, png = tmp_path / "t.md", tmp_path / "p.png"
    assert cl.main(["--outs", str(long), str(short), "--stems", "finetune_frac0.1", "--table", str(table),
                    "--plot", str(png)]) == 0
    rows = [r.split("|")[1:-1] for r in table.read_text().splitlines()[2:]]
    assert [[c.strip() for c in r] for r in rows] == [
        ["random init", "0", "0", "0", "3", "64.0 ± 4.0"],
        ["mae", "8192", "64", "1.0", "3", "56.0 ± 6.0 [0/3]"],   # 50 < 60, 56 < 64, 62 < 68
        ["mae", "32768", "256", "4.0", "3", "67.3 ± 6.4 [2/3]"],  # 70 > 60, 60 < 64, 72 > 68
    ]
    assert png.stat().st_size > 10_000


def test_lengths_refuse_folders_evaluated_differently(tmp_path):
    cl = _module()
    a, b = tmp_path / "a", tmp_path / "b"
    _folder(a, 8192, {0: 0.5}, random={0: 0.6})
    _folder(b, 32768, {0: 0.7})
    _write(b, "mae", 0, "finetune_frac0.1", _eval(0.7, pool=60000))
    with pytest.raises(SystemExit, match=r"evaluated finetune_frac0.1 differently \(train_pool 1000 vs 60000\)"):
        cl.main(["--outs", str(a), str(b), "--stems", "finetune_frac0.1"])
    # one folder, two budgets: not one length
    _write(b, "mae", 0, "finetune_frac0.1", _eval(0.7))
    _folder(b, 16384, {1: 0.7})
    with pytest.raises(SystemExit, match=r"mae was pretrained for several budgets \(\[16384, 32768\]\)"):
        cl.main(["--outs", str(a), str(b), "--stems", "finetune_frac0.1"])
    with pytest.raises(SystemExit, match="no results/ folder"):
        cl.main(["--outs", str(tmp_path / "nowhere")])


def test_lengths_plot_reads_own_architecture_random_init_and_many_methods(tmp_path, monkeypatch):
    """Five methods (figure legend below the panels); a method with its own architecture's
    random-init records gets them collected for the plot, though the table does not show them."""
    cl = _module()
    drawn = {}

    def spy(fig, path, **kw):  # what main's plot hands to save_figure, read before it is closed
        ax = fig.axes[0]
        drawn["dotted"] = [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        drawn["figure_legends"], drawn["axis_legend"], drawn["rect"] = len(fig.legends), ax.get_legend(), kw["rect"]
        return real(fig, path, **kw)

    real = cl.save_figure
    monkeypatch.setattr(cl, "save_figure", spy)
    out = tmp_path / "b8192"
    _folder(out, 8192, {0: 0.5}, random={0: 0.6})
    for i, m in enumerate(["maskfeat", "sdae", "mfm", "supmae"]):
        _write(out, m, 0, "pretrain", {"images_seen": 8192, "steps": 64, "minutes": 1.0})
        _write(out, m, 0, "finetune_frac0.1", _eval(0.4 + 0.05 * i))
    _write(out, "maskfeat", 0, "randarch_finetune_frac0.1", _eval(0.55))
    png = tmp_path / "p.png"
    assert cl.main(["--outs", str(out), "--seeds", "0", "--stems", "finetune_frac0.1", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    # main collected maskfeat's own-architecture record without being asked: one dotted line at its top-1,
    # and six legend entries went to one figure legend in a strip below the panels
    assert drawn["dotted"] == [pytest.approx(55.0)]
    assert (drawn["figure_legends"], drawn["axis_legend"]) == (1, None) and drawn["rect"][1] > 0
    data = cl.collect([out], None, [0], ["finetune_frac0.1", "randarch_finetune_frac0.1"])
    own = {m: accs[0].get("randarch_finetune_frac0.1") for m, _, _, _, accs in data["runs"]}
    assert own == {"maskfeat": pytest.approx(55.0), "mae": None, "mfm": None, "sdae": None, "supmae": None}
    rows = cl.table(data, ["finetune_frac0.1"]).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["random init", "mae", "maskfeat", "mfm", "sdae", "supmae"]
    assert rows[2].split("|")[-2].strip() == "40.0 [0/1]"


def test_lengths_paired_table_gives_per_seed_differences_at_the_same_length(tmp_path):
    """--paired mae: each method's top-1 minus MAE's of the same seed and budget; seeds MAE lacks and
    budgets MAE was not run at are left out, and an absent reference is named."""
    cl = _module()
    short, long = tmp_path / "short", tmp_path / "long"
    _folder(short, 8192, {0: 0.50, 1: 0.56}, random={0: 0.60, 1: 0.64})
    _folder(long, 32768, {0: 0.70, 1: 0.60})
    for seed, top1 in {0: 0.74, 1: 0.58, 2: 0.99}.items():  # seed 2: MAE has none at this length
        _write(long, "supmae", seed, "pretrain", {"images_seen": 32768, "steps": 256, "minutes": 3.0})
        _write(long, "supmae", seed, "finetune_frac0.1", _eval(top1))
    _write(long, "sdae", 0, "pretrain", {"images_seen": 65536, "steps": 512, "minutes": 6.0})  # no MAE there
    _write(long, "sdae", 0, "finetune_frac0.1", _eval(0.9))
    out = tmp_path / "t.md"
    assert cl.main(["--outs", str(short), str(long), "--stems", "finetune_frac0.1", "--paired", "mae",
                    "--table", str(out)]) == 0
    text = out.read_text()
    paired = text.split("\n\n")[1].splitlines()
    assert paired[0] == "| method | images seen | seeds | FT 10% − mae |"
    assert [[c.strip() for c in r.split("|")[1:-1]] for r in paired[2:]] == [
        ["supmae", "32768", "0, 1", "+4.0 / -2.0 (mean +1.0, above in 1/2)"]]
    with pytest.raises(SystemExit, match=r"--paired ibot: no ibot runs to compare with \(runs found: \['mae', "):
        cl.main(["--outs", str(long), "--stems", "finetune_frac0.1", "--paired", "ibot"])
