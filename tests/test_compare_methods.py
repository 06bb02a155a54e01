"""Smoke test of examples/compare_methods.py --quick: two methods + random init, one JSON per
(method, seed, protocol), the table rows, the README section between markers, and a second
invocation that recomputes nothing."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mimkit
from mimkit.config import resolve

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "compare_methods.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_discovery_finds_the_tiny_presets():
    cm = _module()
    methods = cm.discover()
    assert methods[-1] == "random"
    assert "mae" in methods and "supmae" in methods
    assert all(not m.endswith(cm.SUFFIX) for m in methods)


def test_the_machine_names_the_slower_avx2_kind_apart_from_avx512():
    """Timings must name the CPU kind: an AVX2-only machine is 2-3x slower, so its cost cells must not
    read like an AVX-512 one's."""
    ext = _module().cpu_extensions
    assert ext({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512 + bf16"
    assert ext({"avx2", "avx512f"}) == "AVX-512"
    assert ext({"avx", "avx2", "fma"}) == "AVX2"
    assert ext({"sse4_2"}) == ""


def test_excluded_methods_are_left_out_with_a_reason():
    cm = _module()
    assert "ttt" not in cm.discover() and "ttt" in cm.discover(all_methods=True)
    assert all(len(why) > 40 for why in cm.EXCLUDED.values())


def test_every_method_gets_the_common_encoder():
    """The overrides give every compared method the MAE tiny encoder: the same ViT geometry, and
    the same number of encoder parameters within 1% (AttMask / MaskFeat add a [MASK] token, iGPT
    a palette embedding and no patch projection)."""
    cm = _module()
    sizes = {}
    for m in cm.discover()[:-1]:
        base = resolve({"method": m + cm.SUFFIX})
        over = cm.encoder_overrides(m, base)
        r = resolve({"method": m + cm.SUFFIX}, overrides=over)
        if m in cm.METHOD_ENCODER:
            assert (r.model["n_embd"], r.model["n_layer"], r.model["n_head"]) == (192, 6, 3)
        else:
            assert {k: r.model["encoder"][k] for k in cm.COMMON_VIT} == cm.COMMON_VIT, m
        with torch.device("meta"):
            model = mimkit.build(r)
        sizes[m] = sum(p.numel() for p in model.encoder.parameters())
    mae = sizes["mae"]
    assert mae == 2_685_504
    assert {m: n for m, n in sizes.items() if abs(n - mae) > 0.01 * mae} == {}
    # MaskFeat: patch 8 -> 4 scales the HOG cell 4 -> 2 (the paper's patch / cell = 2)
    assert cm.encoder_overrides("maskfeat", resolve({"method": "maskfeat" + cm.SUFFIX})) == [
        "model.encoder.patch_size=4", "model.target.cell=2"]
    assert cm.encoder_overrides("mae", resolve({"method": "mae" + cm.SUFFIX})) == []


def test_table_marks_not_applicable_and_hides_protocols_that_did_not_run():
    cm = _module()
    pre = {"images_seen": 10, "images_per_s": 5.0, "minutes": 0.1, "peak_rss_mib": 900.0, "encoder_params": 2.7e6,
           "method_overrides": ["model.n_embd=192"]}
    res = {"igpt": {0: {"pretrain": pre, "knn_frac0.1": {"top1": 0.5}, "randarch_knn_frac0.1": {"top1": 0.6}}},
           "mae": {0: {"pretrain": {**pre, "method_overrides": []}, "knn_frac0.1": {"top1": 0.7},
                       "occlusion": {"runs": [{"masked": {"0.75": {"normalized": 0.25}}}]}},
                   1: {"pretrain": {**pre, "method_overrides": []}, "knn_frac0.1": {"top1": 0.8}}}}
    md = cm.table(res)
    head, _, igpt, mae = md.splitlines()
    assert "kNN 10%" in head and "occl. inv. 75%" in head and "LP 10%" not in head and "kNN 1%" not in head
    assert "kNN 10% (own arch. random)" in head and "LP 10% (own arch. random)" not in head
    assert [c.strip() for c in igpt.split("|")[-5:-2]] == ["50.0", "n/a", "60.0"] and "`n_embd=192`" in igpt
    assert "75.0 ± 7.1 |" in mae and mae.split("|")[-3].strip() == "= random"
    assert "0.250 (n=1)" in mae  # occlusion ran for one of the row's two seeds
    # MILAN: each seed distils its own seed's FLIP run, and the overrides cell names both
    milan = {s: {"pretrain": {**pre, "method_overrides": [f"model.teacher.source=runs/x/flip_seed{s}"]}} for s in (1, 2)}
    assert cm.table({"milan": milan}).splitlines()[2].endswith("| `source=flip_seed1` / `source=flip_seed2` |")


def test_rows_pretrained_on_another_machine_are_marked_and_gpu_memory_shown(tmp_path):
    cm = _module()
    gpu = {"images_seen": 10, "images_per_s": 900.0, "minutes": 2.0, "peak_rss_mib": 900.0, "encoder_params": 2.7e6,
           "method_overrides": [], "machine": "Xeon, 16 cores", "gpu": "H200", "peak_cuda_mib": 400.0,
           "parallel_jobs": 15}
    cpu = {**gpu, "images_per_s": 60.0, "minutes": 65.0, "machine": "Xeon, 2 cores", "gpu": None,
           "peak_cuda_mib": None, "parallel_jobs": 1}
    res = {"mae": {0: {"pretrain": gpu, "knn_frac0.1": {"top1": 0.7}}},
           "supmae": {0: {"pretrain": gpu, "knn_frac0.1": {"top1": 0.7}}},
           "macrl": {0: {"pretrain": cpu, "knn_frac0.1": {"top1": 0.6}}}}
    assert cm.elsewhere(res) == {"macrl": ("Xeon, 2 cores",)}
    assert cm.where_pretrained(res) == "H200 GPU + Xeon, 16 cores, 15 (method, seed) units at once; Xeon, 2 cores"
    lines = cm.table(res, ["mae", "supmae", "macrl"]).splitlines()
    assert "peak GPU (MiB)" in lines[0]
    mae, macrl = lines[2], lines[4]
    assert "| 900 | 2.00 |" in mae and "| 400 |" in mae
    assert "| 60 † | 65.00 † |" in macrl and macrl.split("|")[8].strip() == "–"  # no GPU memory on the CPU
    assert lines[-1].startswith("† pretrained (some or all seeds) on Xeon, 2 cores, not H200 GPU + Xeon, 16 cores")
    assert "macrl;" in lines[-1]
    assert (cm.elsewhere({"mae": res["mae"], "macrl": res["macrl"] | {1: {"pretrain": cpu}}})
            == {"mae": ("H200 GPU + Xeon, 16 cores",)})
    # a row whose seeds ran on two other machines is named under both footnotes
    epyc = {**cpu, "machine": "EPYC, 2 cores"}
    three = {"mae": {s: {"pretrain": cpu, "knn_frac0.1": {"top1": 0.7}} for s in (0, 1)},
             "flip": {0: {"pretrain": gpu}, 1: {"pretrain": cpu}, 2: {"pretrain": epyc}}}
    assert cm.elsewhere(three) == {"flip": ("EPYC, 2 cores", "H200 GPU + Xeon, 16 cores")}
    notes = [ln for ln in cm.table(three, ["mae", "flip"]).splitlines() if ln.startswith("†")]
    assert len(notes) == 2 and all(": flip;" in ln for ln in notes)
    # no seed on the common CPU, one on the GPU and one on another CPU: the other CPU's cost alone, never a mean
    # (that CPU's name sorts after the GPU's, so only the CPU-beside-CPU tie-break picks it)
    zen = {**cpu, "machine": "Zen 4, 2 cores", "minutes": 73.0, "images_per_s": 55.0}
    boot = {**three, "bootmae": {0: {"pretrain": gpu}, 1: {"pretrain": zen}}}
    row = next(ln for ln in cm.table(boot, ["mae", "flip", "bootmae"]).splitlines() if ln.startswith("| bootmae"))
    assert "| 55 (n=1) † | 73.00 (n=1) † |" in row
    # a row with seeds on both machines: its cost cells show the common machine's seeds only
    mixed = {**res, "mae": {0: res["mae"][0], 1: {"pretrain": cpu, "knn_frac0.1": {"top1": 0.8}}}}
    mae = cm.table(mixed, ["mae", "supmae", "macrl"]).splitlines()[2]
    assert "| 900 (n=1) † | 2.00 (n=1) † |" in mae and "| 400 (n=1) |" in mae and "75.0 ± 7.1" in mae
    # the plot: MACRL (no seed on the common machine) is a dotted line, not a point at 65 minutes
    xlim, save = [], cm.save_figure

    def keep_xlim(fig, path, dpi, rect=None):
        xlim.append(fig.axes[0].get_xlim())
        return save(fig, path, dpi=dpi, rect=rect)

    cm.save_figure = keep_xlim
    try:
        png = cm.plot(res, tmp_path / "p.png", "knn_frac0.1", ["mae", "supmae", "macrl"])
    finally:
        cm.save_figure = save
    assert png is not None and png.stat().st_size > 0 and xlim[0][1] < 10
    assert "†" not in cm.table({"mae": res["mae"]})
    # a pretraining whose killed sitting's time was estimated says so in its cost cells and below the table
    est = cm.table({"mae": {0: {"pretrain": gpu | {"seconds_estimated": True}}}, "supmae": res["supmae"]}).splitlines()
    assert "| 900 ≈ | 2.00 ≈ |" in est[2] and "| 900 | 2.00 |" in est[3] and est[-1].startswith("≈ some pretraining")


def test_own_architecture_baseline_only_where_random_init_differs():
    """MaskFeat / MFM / AttMask (timm init, learned positions) and iGPT get their own random-init
    baseline; the methods built on MAE's encoder (sincos, MAE init) share the ``random`` row."""
    cm = _module()
    own = {m for m in cm.discover()[:-1] if cm.own_architecture(m)}
    assert {"maskfeat", "mfm", "attmask", "igpt"} <= own
    assert not own & {"mae", "supmae", "cmae", "macrl", "sdae", "siamese_mim", "bootmae", "flip", "milan"}


def test_plot_draws_what_exists_and_nothing_when_the_protocol_did_not_run(tmp_path):
    pytest.importorskip("matplotlib")
    cm = _module()
    pre = {"minutes": 2.0}
    res = {"mae": {0: {"pretrain": pre, "finetune_frac0.1": {"top1": 0.5}},
                   1: {"pretrain": {"minutes": 4.0}, "finetune_frac0.1": {"top1": 0.7}}},
           "random": {0: {"finetune_frac0.1": {"top1": 0.6}}}}
    assert cm.plot(res, tmp_path / "lp.png", "linprobe_frac0.1") is None  # an FT-only sitting: no empty plot
    assert not (tmp_path / "lp.png").exists()
    assert cm.plot(res, tmp_path / "ft.png", "finetune_frac0.1") == tmp_path / "ft.png"
    assert (tmp_path / "ft.png").stat().st_size > 0
    two = cm.plot(res, tmp_path / "two.png", ["linprobe_frac0.1", "finetune_frac0.1"])  # the panel with results
    assert two is not None and two.stat().st_size > 0
    # rows over different numbers of seeds say how many; a long title is wrapped to the figure's width
    seen, save = {}, cm.save_figure

    def keep(fig, path, dpi, rect=None):
        seen["labels"] = fig.axes[0].get_legend_handles_labels()[1]
        seen["title"] = fig._suptitle.get_text()
        return save(fig, path, dpi=dpi, rect=rect)

    res["supmae"] = {0: {"pretrain": pre, "finetune_frac0.1": {"top1": 0.65}}}
    cm.save_figure = keep
    try:
        cm.plot(res, tmp_path / "n.png", "finetune_frac0.1", title="x " * 200)
    finally:
        cm.save_figure = save
    assert {"mae (n=2)", "supmae (n=1)"} <= set(seen["labels"])
    assert [x for x in seen["labels"] if "random" in x] == ["random init (mean)"]  # once, as its line
    assert max(len(line) for line in seen["title"].splitlines()) <= 15 * 6 and seen["title"].count("\n") >= 4


def test_readme_section_is_replaced_not_duplicated(tmp_path):
    cm = _module()
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n")
    cm.write_readme(readme, "| a |\n|---|\n| 1 |", "first")
    cm.write_readme(readme, "| a |\n|---|\n| 2 |", "second")
    text = readme.read_text()
    assert text.count(cm.BEGIN) == 1 and text.count(cm.END) == 1
    assert "second" in text and "| 2 |" in text and "| 1 |" not in text and text.startswith("# title\n\nbefore")
    # a named section is another table: the main one stays as it was
    cm.write_readme(readme, "| b |\n|---|\n| 3 |", "other", section="full")
    cm.write_readme(readme, "| b |\n|---|\n| 4 |", "other again", section="full")
    text = readme.read_text()
    assert text.count("<!-- compare:full:begin -->") == 1 and "| 4 |" in text and "| 3 |" not in text
    assert text.count(cm.BEGIN) == 1 and "| 2 |" in text


def test_quick_run_writes_results_and_resumes(tmp_path, monkeypatch):
    cm = _module()
    pytest.importorskip("mimkit_mae")
    pytest.importorskip("mimkit_supmae")
    out, readme = tmp_path / "cmp", tmp_path / "README.md"
    readme.write_text("# x\n")
    argv = ["--quick", "--methods", "mae", "supmae", "random", "--seeds", "0", "--out", str(out),
            "--readme", str(readme), "--limit-test", "50"]
    assert cm.main(argv) == 0

    stems = {"knn_frac0.01", "knn_frac0.1", "linprobe_frac0.01", "linprobe_frac0.1", "finetune_frac0.01",
             "finetune_frac0.1"}
    for m in ("mae", "supmae", "random"):
        files = {p.stem for p in (out / "results" / m / "seed0").glob("*.json")}
        want = stems | ({"pretrain"} if m != "random" else set())
        assert want <= files, (m, files)
        for stem in stems:
            rec = json.loads((out / "results" / m / "seed0" / f"{stem}.json").read_text())
            assert "error" not in rec, rec.get("error")
            assert 0.0 <= rec["top1"] <= 1.0 and rec["num_test"] == 50
            frac = float(stem.split("frac")[1])
            # class-balanced split of the first 500 training items: about frac * 500 labels
            assert rec["num_train"] == pytest.approx(max(10, frac * 500), abs=10)
    pre = json.loads((out / "results" / "mae" / "seed0" / "pretrain.json").read_text())
    assert pre["images_seen"] == 64 and pre["steps"] == 2 and pre["images_per_s"] > 0
    assert pre["encoder_params"] > 1e6 and pre["peak_rss_mib"] > 100
    assert (out / "compare.png").stat().st_size > 0

    text = readme.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["mae", "supmae", "random"]
    assert "SMOKE-SCALE" in text

    # the second invocation reads every result and computes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")}
    assert cm.main(argv) == 0
    log = (out / "log.txt").read_text().splitlines()
    assert log and all(line.startswith("skip") for line in log)
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == mtimes
    assert readme.read_text().count(cm.BEGIN) == 1

    # a record computed with other settings (fine-tuning epochs from before they scaled with the pool)
    # is computed again, and only that one
    ft = out / "results" / "mae" / "seed0" / "finetune_frac0.01.json"
    ft.write_text(json.dumps(json.loads(ft.read_text()) | {"epochs": 99}))
    assert cm.main(argv) == 0
    log = (out / "log.txt").read_text().splitlines()
    assert [line for line in log if not line.startswith("skip")] == [f"run  {ft}"]
    assert json.loads(ft.read_text())["epochs"] == 1
    # every method fine-tunes with the same crop; a record from before records said so is judged by its recipe
    rec = json.loads(ft.read_text())
    assert rec["crop_scale"] == [0.2, 1.0] and rec["train_dataset"] == "FashionMNIST"
    old = {k: v for k, v in rec.items() if k not in ("crop_scale", "train_dataset")}
    args = cm.parse(argv)
    assert cm.stale(ft, old, args) is None  # the MAE preset's own crop is (0.2, 1.0)
    assert "crop_scale" in cm.stale(ft, rec | {"crop_scale": [0.5, 1.0]}, args)
    # the table never shows a record made with other settings
    ft.write_text(json.dumps(rec | {"epochs": 99}))
    assert cm.main(argv + ["--report-only"]) == 0
    lines = [ln.split("|") for ln in readme.read_text().splitlines() if ln.startswith("| method") or ln.startswith("| mae")]
    col = [c.strip() for c in lines[0]].index("FT 1%")
    assert lines[1][col].strip() == "–"
    ft.write_text(json.dumps(rec))
    # another labelled pool or test subset: the evaluation is computed again
    assert "num_test 50 != 60" in cm.stale(ft, rec, cm.parse(argv[:-1] + ["60"]))
    assert "train_pool 500 != 1000" in cm.stale(ft, rec, cm.parse(argv + ["--limit-train", "1000"]))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")}
    # another pretraining budget in the same --out stops the sitting before anything is replaced
    with pytest.raises(SystemExit, match=r"pretrain.json was pretrained for another budget \(budget_images 64 != 128\)"):
        cm.main(argv + ["--budget", "128"])
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == mtimes
    # ... and a report for that budget shows none of the runs of another
    assert cm.main(argv + ["--budget", "128", "--report-only"]) == 0
    assert not [ln for ln in readme.read_text().splitlines() if ln.startswith("| mae")]
    assert [ln for ln in readme.read_text().splitlines() if ln.startswith("| random")]

    # --report-only computes nothing, even for a seed without results; the table keeps the seeds asked for
    assert cm.main(["--quick", "--methods", "mae", "supmae", "random", "--seeds", "0", "1", "--out", str(out), "--readme", str(readme), "--report-only"]) == 0
    assert not (out / "results" / "mae" / "seed1").exists()
    assert {p: p.stat().st_mtime_ns for p in (out / "results").rglob("*.json")} == mtimes
    assert (out / "log.txt").read_text().strip() == ""
    assert cm.main(["--quick", "--methods", "mae", "supmae", "random", "--seeds", "1", "--out", str(out), "--readme", str(readme), "--report-only"]) == 0
    assert not [ln for ln in readme.read_text().splitlines() if ln.startswith("| mae")]
    # a method not asked for is not shown, and neither is the machine it ran on
    other = out / "results" / "flip" / "seed0" / "pretrain.json"
    other.parent.mkdir(parents=True)
    pre = json.loads((out / "results" / "mae" / "seed0" / "pretrain.json").read_text())
    other.write_text(json.dumps(pre | {"method": "flip", "machine": "Elsewhere CPU, 2 cores"}))
    assert cm.main(["--quick", "--methods", "mae", "supmae", "random", "--seeds", "0", "--out", str(out), "--readme", str(readme), "--report-only"]) == 0
    text = readme.read_text()
    assert "Elsewhere CPU" not in text and "| mae" in text and "| flip" not in text
    assert cm.main(["--quick", "--methods", "mae", "flip", "--seeds", "0", "--out", str(out), "--readme", str(readme), "--report-only"]) == 0
    assert "Elsewhere CPU" in readme.read_text()


def test_fine_tuning_epochs_keep_the_full_pools_steps_on_a_smaller_pool():
    cm = _module()
    full = cm.parse(["--ft-epochs", "30", "5"])
    assert (cm.ft_epochs(full, 0.01), cm.ft_epochs(full, 0.1)) == (30, 5)
    small = cm.parse(["--ft-epochs", "30", "5", "--limit-train", "10000"])
    assert (cm.ft_epochs(small, 0.01), cm.ft_epochs(small, 0.1)) == (180, 30)  # x 60000 / 10000
    assert cm.ft_epochs(cm.parse(["--quick"]), 0.01) == 1  # the smoke test stays a smoke test


def _weights(run: Path) -> dict:
    """The model tensors of the run's one checkpoint (the compare script keeps only the newest)."""
    from safetensors.torch import load_file

    from mimkit.checkpoint import complete_checkpoints

    (_, last), = complete_checkpoints(run / "checkpoints")
    return load_file(last / "model.safetensors")


def test_a_stopped_pretraining_resumes_in_the_next_sitting_exactly_and_sums_its_time(tmp_path, monkeypatch):
    cm = _module()
    pytest.importorskip("mimkit_mae")
    from mimkit import trainer

    # a budget of 4 batches of 32 of which whole epochs take 3 (0.39 of 8 steps): the run's own count times it
    argv = ["--quick", "--methods", "mae", "--seeds", "0", "--budget", "100"]
    straight = cm.pretrain("mae", 0, cm.parse(argv + ["--out", str(tmp_path / "straight")]))
    args = cm.parse(argv + ["--out", str(tmp_path / "cut")])

    real = trainer._Run.stop_requested
    monkeypatch.setattr(trainer._Run, "stop_requested", lambda self, stop: real(self, stop) or self.state.step == 2)
    with pytest.raises(SystemExit, match="stopped at step 2 of 4 .preempted.; nothing recorded yet, the next sitting resumes"):
        cm.run_method("mae", 0, args, [])  # what SIGTERM at step 2 does
    assert not list((tmp_path / "cut" / "results").rglob("*.json"))
    run = tmp_path / "cut" / "runs" / "mae_seed0"
    first = json.loads((run / cm.SITTINGS).read_text())
    assert [(x["from_step"], x["to_step"]) for x in first] == [(0, 2)]

    monkeypatch.setattr(trainer._Run, "stop_requested", real)
    pre = cm.pretrain("mae", 0, args)
    assert [(x["from_step"], x["to_step"]) for x in pre["sittings"]] == [(0, 2), (2, 3)]
    assert pre["seconds"] == pytest.approx(sum(x["seconds"] for x in pre["sittings"]), abs=0.02)
    assert pre["seconds_estimated"] is False and straight["seconds_estimated"] is False
    a, b = _weights(Path(straight["run"])), _weights(Path(pre["run"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights as in one sitting
    # a sitting killed outright leaves no record: its steps are counted at the timed steps' pace
    assert cm.sittings_seconds([{"from_step": 2, "to_step": 4, "seconds": 10.0}], 4) == (20.0, True)
    # a checkpoint that differs only in how often it was saved is resumed; one of another recipe is not
    base = pre["overrides"]
    assert cm.resume_point(run, "mae" + cm.SUFFIX, base + ["train.ckpt_every=7"])[0] == 3
    assert cm.resume_point(run, "mae" + cm.SUFFIX, base + ["optim.base_lr=0.5"]) == (0, [])


def test_parallel_units_start_in_cost_order_and_milan_waits_for_its_flip_teacher(tmp_path):
    cm = _module()
    units = cm.unit_order(["mae", "milan", "flip", "attmask", "random", "newcomer"], [0, 1])
    assert units[:6] == [("attmask", 0), ("flip", 0), ("milan", 0), ("mae", 0), ("random", 0), ("newcomer", 0)]
    assert [s for _, s in units] == [0] * 6 + [1] * 6  # seed by seed: a sitting stopped early has whole seeds
    waiting = [("milan", 0), ("flip", 1), ("milan", 1)]
    assert not cm.ready(("milan", 1), waiting, set(), tmp_path)  # its FLIP has not started
    assert not cm.ready(("milan", 0), waiting, {("flip", 0)}, tmp_path)  # FLIP pretraining, no record yet
    rec = tmp_path / "results" / "flip" / "seed0" / "pretrain.json"
    rec.parent.mkdir(parents=True)
    rec.write_text("{}")
    assert cm.ready(("milan", 0), waiting, {("flip", 0)}, tmp_path)  # FLIP's evaluations may still run
    assert cm.ready(("milan", 0), waiting, set(), tmp_path) and cm.ready(("mae", 1), waiting, set(), tmp_path)


def test_parallel_sitting_matches_a_serial_one(tmp_path, monkeypatch):
    """--jobs 2: one subprocess per (method, seed), the same records as the same units run in this
    process (one thread each, so the arithmetic is the same); --set reaches the pretraining and is
    recorded; --stop-after 0 starts nothing."""
    cm = _module()
    pytest.importorskip("mimkit_mae")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    common = ["--quick", "--methods", "mae", "random", "--protocols", "knn", "--fractions", "0.1",
              "--limit-test", "50", "--set", "train.log_every=1"]
    par, ser = tmp_path / "par", tmp_path / "ser"
    assert cm.main(common + ["--seeds", "1", "--jobs", "2", "--out", str(par), "--readme", str(tmp_path / "a.md")]) == 0
    torch.set_num_threads(1)
    try:
        assert cm.main(common + ["--seeds", "1", "--out", str(ser), "--readme", str(tmp_path / "b.md")]) == 0
    finally:
        torch.set_num_threads(threads)
    log = (par / "log.txt").read_text()
    for m in ("mae", "random"):
        assert f"unit {m} seed 1 rc=0" in log and (par / "logs" / f"{m}_seed1.log").stat().st_size > 0
        a, b = (json.loads((o / "results" / m / "seed1" / "knn_frac0.1.json").read_text()) for o in (par, ser))
        assert "error" not in a and (a["top1"], a["indices_sha256"]) == (b["top1"], b["indices_sha256"])
    pre = json.loads((par / "results" / "mae" / "seed1" / "pretrain.json").read_text())
    assert pre["parallel_jobs"] == 2 and pre["extra_overrides"] == ["train.log_every=1"]
    assert "train.log_every=1" in pre["overrides"] and pre["device"] == "cpu"
    rows = [ln for ln in (tmp_path / "a.md").read_text().splitlines() if ln.startswith("| mae") or ln.startswith("| random")]
    assert len(rows) == 2  # the parent's report reads what the units wrote

    late = tmp_path / "late"
    assert cm.main(common + ["--seeds", "0", "--jobs", "2", "--stop-after", "0", "--out", str(late),
                             "--readme", str(tmp_path / "c.md")]) == 0
    assert not (late / "results").exists()
    assert sorted((late / "log.txt").read_text().split("\n")[:2]) == ["late mae seed 0", "late random seed 0"]


def test_plot_labels_of_methods_at_the_same_point_do_not_overlap(tmp_path, monkeypatch):
    """Methods of about the same cost and accuracy: their names are spread apart, none over another,
    and each stays within a few lines of its marker."""
    pytest.importorskip("matplotlib")
    cm = _module()
    res = {m: {0: {"pretrain": {"minutes": 10.0 + 0.1 * i}, "linprobe_frac0.1": {"top1": 0.80 + 0.001 * i}}}
           for i, m in enumerate(["mae", "supmae", "sdae", "siamese_mim", "cmae"])}
    res["attmask"] = {0: {"pretrain": {"minutes": 100.0}, "linprobe_frac0.1": {"top1": 0.5}}}  # wide axes:
    res["random"] = {0: {"linprobe_frac0.1": {"top1": 0.7}}}  # the five share a spot of the panel
    seen, save = {}, cm.save_figure

    def keep(fig, path, dpi, rect=None):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        seen["boxes"] = [(t.get_text(), t.get_window_extent(r), t.xyann) for t in fig.axes[0].texts]
        return save(fig, path, dpi=dpi, rect=rect)

    monkeypatch.setattr(cm, "save_figure", keep)
    assert cm.plot(res, tmp_path / "lp.png", "linprobe_frac0.1") is not None
    boxes = seen["boxes"]
    assert sorted(name for name, *_ in boxes) == sorted(res)
    overlaps = [(a, b) for i, (a, ba, _) in enumerate(boxes) for b, bb, _ in boxes[i + 1:] if ba.overlaps(bb)]
    assert overlaps == []
    crowd = [off for name, _, off in boxes if name not in ("attmask", "random")]
    assert len(set(crowd)) == 5  # moved apart, not all left where they were drawn
    assert all(abs(off[1]) < 60 and abs(off[0]) < 60 for *_, off in boxes)  # near their markers (points)
