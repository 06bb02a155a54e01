"""Issue 19: what a hostile user broke, each reproduced through the CLI (in-process
``mimkit.cli.main``, so a raw traceback fails the test) or the public API."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import mimkit
import mimkit.checkpoint as ck
from mimkit.cli import main
from mimkit.config import resolve
from mimkit.errors import CheckpointError, ConfigError, MimkitError
from mimkit.rundir import LOCK, RunLock
from mimkit.trainer import NonFiniteLoss

from conftest import tiny_recipe

pytest.importorskip("mimkit_mae")


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``mim ARGV`` in this process: (exit code, stderr). argparse errors exit 2 too."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints at steps 1 and 2 (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("trained")
    return mimkit.train(tiny_recipe(out, "base", max_steps=2, log_every=1, ckpt_every=1, keep_last=5))


def copy_run(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


def base_recipe(tmp_path: Path, name: str = "base", **train) -> dict:
    return tiny_recipe(tmp_path, name, **({"max_steps": 2, "log_every": 1, "ckpt_every": 1, "keep_last": 5} | train))


# ---------------------------------------------------------------------------------------------
# Data loss


def test_run_name_must_be_plain_and_overwrite_removes_only_a_mimkit_run(tmp_path, capsys):
    out = tmp_path / "runs"
    sibling = out / "sibling"
    sibling.mkdir(parents=True)
    (sibling / "meta.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    f = write(tmp_path / "r.yaml", tiny_recipe(out, "x", max_steps=1))
    for name in (".", "..", str(outside), "a/b", ""):
        rc, err = cli(capsys, "train", f, "--overwrite", "--set", f"name={name!s}" if name else "name=''")
        assert rc == 2 and "'name'" in err and "plain folder name" in err, err
    assert (sibling / "meta.json").is_file() and (outside / "precious.txt").read_text() == "keep me"
    # a folder that is not a mimkit run (no meta.json / recipe.yaml) is never removed by --overwrite
    foreign = out / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    rc, err = cli(capsys, "train", f, "--overwrite", "--set", "name=photos")
    assert rc == 2 and "not a mimkit run folder" in err and "holiday.jpg" in err
    assert (foreign / "holiday.jpg").read_bytes() == b"jpg"


def test_overwrite_empties_a_real_run_and_resume_with_overwrite_is_refused(tmp_path, capsys, trained):
    run = copy_run(trained, tmp_path / "base")
    (run / "extra.txt").write_text("old")
    f = write(tmp_path / "r.yaml", base_recipe(tmp_path, max_steps=1))
    rc, err = cli(capsys, "train", f, "--resume", "--overwrite")
    assert rc == 2 and "contradict" in err and (run / "extra.txt").is_file()
    rc, err = cli(capsys, "train", f, "--overwrite")
    assert rc == 0, err
    assert not (run / "extra.txt").exists() and [p.name for p in (run / "checkpoints").iterdir()] == ["step_1"]


def test_keep_last_below_one_is_refused_and_the_newest_checkpoint_is_never_pruned(tmp_path, capsys):
    f = write(tmp_path / "r.yaml", tiny_recipe(tmp_path, "k", max_steps=1))
    for bad in ("0", "-3"):
        rc, err = cli(capsys, "train", f, "--set", f"train.keep_last={bad}")
        assert rc == 2 and "train.keep_last" in err and ">= 1" in err
    assert not (tmp_path / "k").exists()
    ckdir = tmp_path / "ck"
    for step in (1, 2, 3):
        ck.write(ckdir, step, {"state.json": {"step": step}}, keep_last=0)  # the API cannot prune them all
    assert [s for s, _ in ck.complete_checkpoints(ckdir)] == [3]


def test_no_checkpoint_is_written_over_non_finite_parameters(tmp_path):
    recipe = tiny_recipe(tmp_path, "inf", max_steps=3, ckpt_every=1, log_every=5, nonfinite="skip")
    recipe["optim"] |= {"lr": 1.0e39, "warmup_epochs": 0}
    with pytest.raises(NonFiniteLoss, match=r"non-finite parameters at step 1 .*last good one is kept: None"):
        mimkit.train(recipe)
    ckdir = tmp_path / "inf" / "checkpoints"
    assert ck.complete_checkpoints(ckdir) == [] and not any(ckdir.glob(".tmp*"))


def test_nonfinite_stop_message_names_the_last_good_checkpoint(tmp_path, trained):
    run = copy_run(trained, tmp_path / "base")
    recipe = base_recipe(tmp_path, max_steps=4)
    recipe["optim"] |= {"lr": 1.0e39}
    with pytest.raises(NonFiniteLoss, match=r"step 3 .*kept: .*step_2"):
        mimkit.train(recipe, resume=True, allow_optim_change=True)
    last = ck.latest(run / "checkpoints")
    assert last.name == "step_2" and all(torch.isfinite(v).all() for v in load_file(str(last / "model.safetensors")).values())


def test_rerun_without_checkpoints_starts_a_clean_metrics_log(tmp_path, trained):
    run = copy_run(trained, tmp_path / "base")
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 99, "loss": 1.0}\n')
    mimkit.train(base_recipe(tmp_path))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resume_drops_metric_rows_past_the_checkpoint(tmp_path, trained):
    run = copy_run(trained, tmp_path / "base")
    shutil.rmtree(run / "checkpoints" / "step_2")  # killed after logging step 2, before its checkpoint
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')  # and a torn line
    mimkit.train(base_recipe(tmp_path), resume=True)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


# ---------------------------------------------------------------------------------------------
# Corrupt state

HOLD = """
import sys, time
from pathlib import Path
from mimkit.rundir import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path, capsys, subprocess_env):
    run = tmp_path / "base"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=subprocess_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        f = write(tmp_path / "r.yaml", base_recipe(tmp_path, max_steps=1))
        rc, err = cli(capsys, "train", f)
        assert rc == 2 and f"in use by PID {holder.pid}" in err, err
        assert not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, stale
        holder.wait(timeout=30)
    assert (run / LOCK).is_file()
    rc, err = cli(capsys, "train", f)
    assert rc == 0, err
    assert not (run / LOCK).exists() and ck.latest(run / "checkpoints").name == "step_1"
    with RunLock(run):  # released after a normal end: it can be taken again
        with pytest.raises(MimkitError, match=f"PID {os.getpid()}"):
            RunLock(run).acquire()


def test_resume_with_a_changed_recipe_refuses_fixed_keys_and_records_mutable_ones(tmp_path, capsys, trained):
    run = copy_run(trained, tmp_path / "base")
    original = (run / "recipe.yaml").read_bytes()
    f = write(tmp_path / "r.yaml", base_recipe(tmp_path))
    rc, err = cli(capsys, "train", f, "--resume", "--set", "train.batch_size=16", "--set", "seed=1",
                  "--set", "model.masker.ratio=0.5")
    assert rc == 2 and "cannot change mid-run" in err
    for key in ("train.batch_size: 32 -> 16", "seed: 0 -> 1", "model.masker.ratio: 0.75 -> 0.5"):
        assert key in err, err
    rc, err = cli(capsys, "train", f, "--resume", "--set", "optim.lr=0.01")
    assert rc == 2 and "optim.lr: None -> 0.01" in err and "--allow-optim-change" in err
    rc, err = cli(capsys, "train", f, "--resume", "--allow-optim-change", "--set", "optim.lr=1e-3",
                  "--set", "train.max_steps=3")
    assert rc == 0, err
    out = capsys.readouterr()
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 2 and history[-1]["changes"] == {"optim.lr": [None, 0.001], "train.max_steps": [2, 3]}
    assert (run / "recipe.yaml").read_bytes() == original  # the original recipe is never overwritten
    assert yaml.safe_load((run / "checkpoints" / "step_3" / "recipe.yaml").read_text())["optim"]["lr"] == 0.001
    del out


def test_check_preset_trains_style_resume_under_another_name_is_no_change(tmp_path, trained):
    other = tmp_path / "elsewhere" / "kit_resumed"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copytree(trained / "checkpoints" / "step_1", other / "checkpoints" / "step_1")
    mimkit.train(base_recipe(tmp_path / "elsewhere", "kit_resumed"), resume=True)
    assert not (other / "history.jsonl").exists() and ck.latest(other / "checkpoints").name == "step_2"


# ---------------------------------------------------------------------------------------------
# Hangs


def test_a_checkpoint_position_that_does_not_fit_the_data_plan_is_refused_not_looped(tmp_path, trained):
    run = copy_run(trained, tmp_path / "base")
    state = run / "checkpoints" / "step_2" / "state.json"
    state.write_text(json.dumps(json.loads(state.read_text()) | {"micro": 40}))  # 8 micro-batches per epoch
    t = time.time()
    with pytest.raises(CheckpointError, match="does not fit this run's data plan"):
        mimkit.train(base_recipe(tmp_path), resume=True)
    assert time.time() - t < 60


@pytest.mark.parametrize("key", ["batch_size", "grad_accum", "log_every", "ckpt_every", "max_steps", "knn_every"])
@pytest.mark.parametrize("value", [0, -8])
def test_sizes_and_periods_must_be_positive(key, value):
    with pytest.raises(ConfigError, match=rf"'train\.{key}'.*>= 1"):
        resolve({"train": {key: value}})


BOMB = """
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def test_yaml_alias_bombs_are_refused_quickly_with_short_messages(tmp_path, capsys):
    f = tmp_path / "bomb.yaml"
    f.write_text("bomb:" + BOMB.replace("\n", "\n  ") + "\ntrain: {batch_size: *h}\n")
    t = time.time()
    rc, err = cli(capsys, "train", f, "--dry-run")
    assert rc == 2 and "alias bomb" in err and len(err) < 500 and time.time() - t < 10, err
    # a smaller nest passes the size check: the type error prints a bounded repr
    small = tmp_path / "small.yaml"
    small.write_text("bomb:" + BOMB.split("d:")[0].replace("\n", "\n  ") + "\ntrain: {batch_size: *c}\n")
    rc, err = cli(capsys, "train", small, "--dry-run")
    assert rc == 2 and "train" in err and len(err) < 600, err
    # the same bomb in an export's metadata
    export = tmp_path / "bomb.safetensors"
    save_file({"w": torch.zeros(1)}, str(export), metadata={"mimkit_recipe": f.read_text(), "mimkit_content": "full"})
    t = time.time()
    rc, err = cli(capsys, "export", export, "--out", tmp_path / "o.safetensors")
    assert rc == 2 and "alias bomb" in err and time.time() - t < 10, err


# ---------------------------------------------------------------------------------------------
# Disk full; numbers as users write them


class _SafetensorFull(Exception):
    pass


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt", "rng_rank0.safetensors", "state.json",
                                    "recipe.yaml", "COMPLETE"])
def test_disk_full_at_every_checkpoint_write_removes_the_partial_folder(tmp_path, monkeypatch, victim):
    real_save, real_torch_save, real_write_text = ck.save_file, torch.save, Path.write_text

    def save_file_(obj, path, *a, **k):
        if path.endswith(victim):
            raise _SafetensorFull("No space left on device (os error 28)")  # safetensors' SafetensorError
        return real_save(obj, path, *a, **k)

    def torch_save(obj, path, *a, **k):
        if str(path).endswith(victim):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        return real_torch_save(obj, path, *a, **k)

    def write_text(self, text, *a, **k):
        if self.name == victim:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file_)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(Path, "write_text", write_text)
    files = {"model.safetensors": {"w": torch.ones(2)}, "optimizer.pt": {"state": {}},
             "rng_rank0.safetensors": {"r": torch.zeros(3)}, "state.json": {"step": 1}, "recipe.yaml": "name: x\n"}
    with pytest.raises(OSError, match=rf"{victim}|No space left"):
        ck.write(tmp_path / "ck", 1, files, keep_last=2)
    assert list((tmp_path / "ck").iterdir()) == []  # no partial temporary folder left to fill the disk


def test_disk_full_in_a_run_stops_with_the_promised_message(tmp_path, monkeypatch):
    real, calls = torch.save, {"n": 0}

    def torch_save(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", torch_save)
    with pytest.raises(MimkitError, match=r"step 2 .*optimizer.pt.*previous checkpoint is intact: .*step_1"):
        mimkit.train(base_recipe(tmp_path, "full"))
    assert not list((tmp_path / "full" / "checkpoints").glob(".tmp*"))


def test_numbers_parse_as_users_write_them(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("optim: {lr: 1e30, base_lr: 1.0e-3, min_lr: 1E-7, weight_decay: .5}\ntrain: {epochs: 2e0}\n")
    r = resolve(f, ["optim.warmup_start_lr=1e-9", "optim.clip_grad=1e3"])
    assert (r.optim.lr, r.optim.base_lr, r.optim.min_lr, r.optim.weight_decay) == (1e30, 1e-3, 1e-7, 0.5)
    assert r.train.epochs == 2.0 and r.optim.warmup_start_lr == 1e-9 and r.optim.clip_grad == 1000.0
    assert resolve({}, ["optim.base_lr=1e-3"]).optim.base_lr == 1e-3  # the README's own example
    with pytest.raises(ConfigError, match="'name'"):
        resolve({}, ["name=1e3"])  # a float, not a folder name: refused by type, not silently converted
    from mimkit.config import dump, yaml_load

    named = resolve({"name": "1e3", "data": {"name": "fashion_mnist"}})  # a string that looks like a number survives the recipe.yaml round trip
    assert yaml_load(dump(named), "x")["name"] == "1e3" and resolve(yaml_load(dump(named), "x")) == named


# ---------------------------------------------------------------------------------------------
# One-line errors instead of raw tracebacks


def _damage(run: Path, what: str) -> None:
    last = run / "checkpoints" / "step_2"
    if what == "no recipe.yaml":
        (last / "recipe.yaml").unlink()
    elif what == "state without step":
        state = json.loads((last / "state.json").read_text())
        del state["step"]
        (last / "state.json").write_text(json.dumps(state))
    elif what == "empty optimizer.pt":
        (last / "optimizer.pt").write_bytes(b"")
    elif what == "garbage model":
        (last / "model.safetensors").write_bytes(b"\x00garbage" * 10)


@pytest.mark.parametrize("what,expect", [("no recipe.yaml", "lacks recipe.yaml|recipe.yaml"),
                                         ("state without step", "state.json: step missing"),
                                         ("empty optimizer.pt", "optimizer.pt: the file is empty"),
                                         ("garbage model", "model.safetensors: not a complete safetensors")])
def test_damaged_checkpoints_give_one_line_errors(tmp_path, capsys, trained, what, expect):
    run = copy_run(trained, tmp_path / "base")
    _damage(run, what)
    f = write(tmp_path / "r.yaml", base_recipe(tmp_path, max_steps=3))
    rc, err = cli(capsys, "train", f, "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    import re
    assert re.search(expect, err), err
    rc, err = cli(capsys, "export", run, "--out", tmp_path / "e.safetensors")
    if what in ("no recipe.yaml", "garbage model"):
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob(".e.safetensors.tmp*"))


def test_damaged_files_and_bad_flags_give_one_line_errors(tmp_path, capsys, trained):
    export = tmp_path / "full.safetensors"
    assert cli(capsys, "export", trained, "--format", "full", "--out", export)[0] == 0
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(export.read_bytes()[:300])
    rc, err = cli(capsys, "export", truncated, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and "trunc.safetensors" in err and "not a complete safetensors" in err
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    rc, err = cli(capsys, "export", empty, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and "empty.pth" in err and "empty" in err and "may contain code" not in err
    mae_like = tmp_path / "partial_mae.pth"
    state = {k: v for k, v in load_file(str(trained / "checkpoints" / "step_2" / "model.safetensors")).items()}
    torch.save({"model": {"cls_token": state["encoder.vit.cls_token"], "patch_embed.proj.weight": torch.zeros(64, 1, 4, 4)}},
               mae_like)
    rc, err = cli(capsys, "export", mae_like, "--out", tmp_path / "x.safetensors")
    assert rc == 2 and "partial_mae.pth" in err
    (tmp_path / "dir.safetensors").mkdir()
    rc, err = cli(capsys, "export", trained, "--out", tmp_path / "dir.safetensors")
    assert rc == 2 and "is a folder" in err and not list(tmp_path.glob(".dir.safetensors.tmp*"))
    rc, err = cli(capsys, "visualize", trained, "--num", "0")
    assert rc == 2 and "--num" in err and ">= 1" in err
    metrics = tmp_path / "m" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text((trained / "metrics.jsonl").read_text() + '{"step": 3, "lo')
    rc, err = cli(capsys, "plot", metrics.parent)
    assert rc == 0 and "metrics.jsonl:3: skipped an unreadable line" in err and (metrics.parent / "loss_curve.png").is_file()


@pytest.mark.parametrize("override,key", [
    ("seed=1000000000000000000000000000000", "'seed'"), ("seed=-1", "'seed'"),
    ("train.num_workers=-1", "train.num_workers"), ("train.epochs=-1", "train.epochs"),
    ("train.epochs=0", "train.epochs"), ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.lr=-0.1", "optim.lr"), ("optim.base_lr=.nan", "optim.base_lr"), ("model.masker.ratio=0.0", "model.masker.ratio"),
    ("train.keep_last=0", "train.keep_last"), ("optim.ref_batch=0", "optim.ref_batch"),
])
def test_values_that_cannot_be_meant_are_refused_naming_the_key(tmp_path, capsys, override, key):
    f = write(tmp_path / "r.yaml", tiny_recipe(tmp_path, "v"))
    rc, err = cli(capsys, "train", f, "--dry-run", "--set", override)
    assert rc == 2 and key in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag,key", [("--k=0", "k"), ("--temperature=0", "temperature"),
                                      ("--labels-fraction=1.5", "labels_fraction"), ("--limit-train=0", "limit_train")])
def test_eval_flags_that_cannot_be_meant_are_refused(tmp_path, capsys, trained, flag, key):
    rc, err = cli(capsys, "eval", "knn", trained, flag)
    assert rc == 2 and key in err, err


def test_an_all_bad_image_folder_with_skip_is_a_data_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(8):
        (root / f"{i}.png").write_bytes(b"not a png")
    recipe = tiny_recipe(tmp_path, "bad", max_steps=1, batch_size=4)
    recipe["data"] = {"name": "image_folder", "root": str(root), "img_size": 32, "channels": 1, "bad_data": "skip"}
    recipe["eval_data"] = None
    with pytest.raises(mimkit.DataError, match=r"every file of a training batch was unreadable .*\.png"):
        mimkit.train(recipe)


# ---------------------------------------------------------------------------------------------
# Fuzzing: the CLI's flags and damaged checkpoint folders

FLAG_VALUES = st.sampled_from(["0", "-1", "1", "1e-3", "1e30", ".nan", "abc", "", "[1, 2]", "{a: 1}", "*x", "&a b",
                               "!!python/name:os.system", "1.5", "true", "null", "~", "-", "--", "=", "a=b"])


@st.composite
def argvs(draw, trained: Path, tmp: Path):
    cmd = draw(st.sampled_from(["train", "export", "visualize", "plot", "eval", "plugins", "bogus"]))
    source = draw(st.sampled_from([str(trained / "checkpoints" / "missing"), str(tmp / "nothing"), str(tmp),
                                   str(tmp / "r.yaml"), "mae_tiny_fashion_mnist", ""]))
    argv = [cmd]
    if cmd == "eval":
        argv += [draw(st.sampled_from(["knn", "linprobe", "nope"]))]
    argv.append(source)
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(["--set", "--num", "--seed", "--out", "--format", "--k", "--temperature",
                                     "--labels-fraction", "--pool", "--resume", "--overwrite", "--bogus", "--strict"]))
        argv.append(flag)
        if draw(st.booleans()):
            value = draw(FLAG_VALUES)
            if flag == "--set":
                value = draw(st.sampled_from(["seed", "train.batch_size", "name", "optim.lr", "model.masker.ratio",
                                              "data.limit", "x.y"])) + "=" + value
            if flag == "--out":
                value = str(tmp / "o") + value
            argv.append(value)
    if cmd == "train":
        argv.append("--dry-run")  # validate everything, train nothing
    return argv


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_cli_flags_exit_cleanly(tmp_path, capsys, trained, data):
    write(tmp_path / "r.yaml", tiny_recipe(tmp_path, "f"))
    argv = data.draw(argvs(trained, tmp_path))
    try:
        rc, err = cli(capsys, *argv)
    except MimkitError as exc:  # main() turns these into exit 2; reaching here is a bug
        raise AssertionError(f"{argv}: {exc}")
    assert rc in (0, 1, 2), (argv, rc, err)
    if rc == 2:
        assert err.strip(), argv


DAMAGE = st.sampled_from(["keep", "delete", "empty", "truncate", "garbage", "json-list"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(damage=st.fixed_dictionaries({name: DAMAGE for name in ["model.safetensors", "optimizer.pt", "state.json",
                                                                  "recipe.yaml", "rng_rank0.safetensors", "COMPLETE"]}),
       cut=st.integers(12, 400))
def test_fuzzed_damaged_checkpoint_folders_load_or_fail_with_a_mimkit_error(tmp_path_factory, trained, damage, cut):
    d = tmp_path_factory.mktemp("dmg") / "checkpoints" / "step_2"
    shutil.copytree(trained / "checkpoints" / "step_2", d)
    for name, how in damage.items():
        f = d / name
        if how == "delete":
            f.unlink()
        elif how == "empty":
            f.write_bytes(b"")
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[:cut])
        elif how == "garbage":
            f.write_bytes(os.urandom(cut))
        elif how == "json-list":
            f.write_text("[1, 2]")
    for target in (d, d.parent.parent):  # the checkpoint folder itself, and as a run's checkpoints/ folder
        try:
            model = mimkit.load(target)
        except MimkitError:
            continue
        assert isinstance(model, torch.nn.Module)
    try:
        ck.load_torch(d / "optimizer.pt")
        ck.load_json(d / "state.json")
    except MimkitError:
        pass


def test_img_size_zero_is_a_config_error_before_the_run_folder_changes(tmp_path, capsys):
    f = write(tmp_path / "r.yaml", tiny_recipe(tmp_path, "z", max_steps=1))
    rc, err = cli(capsys, "train", f, "--set", "data.img_size=0")
    assert rc == 2 and "img_size" in err and ">= 1" in err
    assert not (tmp_path / "z").exists()


def test_flat_images_beside_class_folders_are_ignored_with_a_warning(tmp_path):
    from PIL import Image

    from mimkit.api import build_dataset

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "cat" / "a.png")
    Image.new("L", (8, 8)).save(root / "loose.png")
    with pytest.warns(UserWarning, match=r"1 files beside the class subfolders are ignored \(e.g. loose.png\)"):
        ds = build_dataset(resolve({"data": {"name": "image_folder", "root": str(root), "img_size": 8, "channels": 1}}))
    assert [p.name for p, _ in ds.samples] == ["a.png"]
