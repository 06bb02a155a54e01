"""Outgrowing one machine: FSDP2 through Accelerate, tar shards, the multi-node launch (as 2 CPU processes)."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import mimkit
from mimkit import cli
from mimkit.components.datasets import FashionMNIST, ImageFolder
from mimkit.components.shards import Shards
from mimkit.data import SeededDataset
from mimkit.distributed import DistributedConfig, read_sharded, resolve_strategy

from conftest import tiny_recipe

pytest.importorskip("mimkit_mae")

ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """256 Fashion-MNIST test images as PNGs in class folders, and `mim shard` of them (6 shards)."""
    root = tmp_path_factory.mktemp("fmnist")
    images = FashionMNIST(FashionMNIST.Config(split="test", limit=256, augment=False))
    for i in range(len(images)):
        folder = root / "png" / f"{int(images.labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images.images[i].numpy()).save(folder / f"{i:05d}.png")
    assert cli.main(["shard", str(root / "png"), str(root / "shards"), "--shard-size", "50"]) == 0
    return root / "png", root / "shards"


def _data(root: Path) -> dict:
    return {"name": "shards", "root": str(root), "img_size": 32, "channels": 1, "mean": [0.286], "std": [0.353]}


def test_shards_hold_the_folder_with_the_same_seeded_samples(shards, capsys):
    png, out = shards
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 256 and [s["name"] for s in index["shards"]] == [f"shard-{k:06d}.tar" for k in range(6)]
    assert [len(s["samples"]) for s in index["shards"]] == [50] * 5 + [6]
    a = Shards(Shards.Config(**{k: v for k, v in _data(out).items() if k != "name"}))
    b = ImageFolder(ImageFolder.Config(root=str(png), img_size=32, channels=1, mean=(0.286,), std=(0.353,), held_out=0.0))
    assert a.classes == b.classes == [str(k) for k in range(10)]
    sa, sb = SeededDataset(a, 3), SeededDataset(b, 3)
    for epoch in (0, 1):  # same bytes, same per-(seed, epoch, index) augmentation as the image folder
        sa.set_epoch(epoch), sb.set_epoch(epoch)
        for i in range(len(a)):
            x, y = sa[i], sb[i]
            assert torch.equal(x["image"], y["image"]) and x["label"] == y["label"], i
    # loader workers (forked, each opening its own shard files) give the same batches as none
    from torch.utils.data import DataLoader

    from mimkit.data import collate

    for _ in range(len(a)):  # the parent holds open shard files when the workers fork
        a._read(*a.index[_][:3])
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0)).view(8, 32).tolist()
    ref = [collate([sa[i] for i in b]) for b in order]
    got = list(DataLoader(sa, batch_sampler=order, collate_fn=collate, num_workers=2))
    assert all(torch.equal(r["image"], g["image"]) and torch.equal(r["index"], g["index"]) for r, g in zip(ref, got))
    # without index.json the tar headers are read: the same samples
    bare = out.parent / "bare"
    bare.mkdir()
    for p in out.glob("*.tar"):
        shutil.copy(p, bare / p.name)
    assert Shards(Shards.Config(root=str(bare), img_size=32, channels=1)).index == a.index
    # the WebDataset layout: webdataset itself reads the same keys and labels
    wds = pytest.importorskip("webdataset")
    items = list(wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False))
    assert len(items) == 256 and [int(it["cls"]) for it in items] == a.labels
    # writing over existing shards is refused; a truncated shard names itself
    assert cli.main(["shard", str(png), str(out), "--shard-size", "50"]) == 2
    assert "already holds shards" in capsys.readouterr().err
    last = bare / "shard-000005.tar"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(mimkit.DataError, match="shard-000005.tar"):
        Shards(Shards.Config(root=str(bare), img_size=32, channels=1))


def test_strategy_comes_from_the_recipe_else_accelerate_config(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert resolve_strategy(DistributedConfig(), 2)[0] == "ddp"
    assert resolve_strategy(DistributedConfig(strategy="fsdp"), 1)[0] == "none"  # one process: nothing to shard
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate config` -> FSDP exports at launch
    assert resolve_strategy(DistributedConfig(), 2) == ("fsdp", "accelerate config (ACCELERATE_USE_FSDP)")
    assert resolve_strategy(DistributedConfig(strategy="ddp"), 2)[0] == "ddp"  # the recipe wins
    with pytest.raises(mimkit.ConfigError, match="strategy"):
        mimkit.train(tiny_recipe(Path("/nonexistent"), "x", distributed={"strategy": "zero3"}))


def test_sharded_metadata_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / ".metadata").write_bytes(pickle.dumps(Evil()))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, "evil")))
    with pytest.raises(mimkit.CheckpointError, match="system"):
        mimkit.load(tmp_path)
    assert not (tmp_path / "pwned").exists()


def _launch(recipe: dict, path: Path, env: dict, *extra: str, kind: tuple = ("--multi_gpu",)) -> None:
    """The README's multi-node command with one machine of two CPU processes (gloo)."""
    path.write_text(yaml.safe_dump(recipe))
    out = subprocess.run([str(ACCELERATE), "launch", *kind, "--num_machines", "1", "--machine_rank", "0",
                          "--main_process_ip", "127.0.0.1", "--main_process_port", str(29500 + os.getpid() % 400),
                          "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "mimkit.cli", "train", str(path), *extra],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_fsdp_on_shards_matches_ddp_and_one_process_and_resumes_exactly(shards, tmp_path, subprocess_env):
    _, root = shards

    def recipe(name, **train):
        r = tiny_recipe(tmp_path, name, epochs=1, ckpt_every=4, keep_last=10, **train)
        return r | {"data": _data(root), "optim": r["optim"] | {"clip_grad": 0.5}}  # clipping sees the whole norm

    one = mimkit.train(recipe("one"))  # one process, batch 32: the reference
    probe = {"knn_every": 8, "knn_train": 64, "knn_test": 8}  # at the last step, on the main process
    _launch(recipe("ddp", batch_size=16, distributed={"strategy": "ddp"}, **probe), tmp_path / "ddp.yaml", subprocess_env)
    _launch(recipe("fsdp", batch_size=16, distributed={"strategy": "fsdp"}, **probe), tmp_path / "fsdp.yaml",
            subprocess_env)
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    # the same samples, masks and global batch over 2 processes as in one; FSDP's curve is DDP's
    assert len(_losses(one)) == len(_losses(ddp)) == len(_losses(fsdp)) == 4
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-4)
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)
    meta = json.loads((fsdp / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["distributed"]["strategy"] == "fsdp"
    assert meta["distributed"]["accelerate"] == "FSDP" and meta["distributed"]["units"] == ["Block"]
    assert json.loads((ddp / "meta.json").read_text())["distributed"]["strategy"] == "ddp"
    knn = [[json.loads(x)["knn_top1"] for x in (r / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
           for r in (ddp, fsdp)]
    assert len(knn[0]) == 1 and knn[0] == knn[1]  # the probe of a copy gathered from the FSDP shards
    # an FSDP checkpoint is sharded: one file per process, no full copy; mimkit.load consolidates it
    step8 = fsdp / "checkpoints" / "step_8"
    assert sorted(p.name for p in (step8 / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (step8 / "model.safetensors").exists() and not list((fsdp / "checkpoints").glob(".tmp*"))
    loaded, ref = mimkit.load(fsdp).state_dict(), mimkit.load(ddp).state_dict()
    assert loaded.keys() == ref.keys()
    assert max((loaded[k] - ref[k]).abs().max().item() for k in ref) < 1e-5
    # resume from the middle of the epoch (step 4 of 8): model and optimizer shards bitwise equal
    straight = {part: read_sharded(step8 / "sharded", part) for part in ("model", "optim")}
    shutil.rmtree(step8)
    _launch(recipe("fsdp", batch_size=16, distributed={"strategy": "fsdp"}, **probe), tmp_path / "fsdp.yaml",
            subprocess_env, "--resume", kind=("--use_fsdp", "--fsdp_version", "2"))  # the launcher's FSDP agrees
    for part, want in straight.items():
        got = read_sharded(step8 / "sharded", part)
        flat_w, flat_g = _flat(want), _flat(got)
        assert flat_w.keys() == flat_g.keys() and len(flat_w) > 40, part
        for k in flat_w:
            assert (torch.equal(flat_w[k], flat_g[k]) if torch.is_tensor(flat_w[k]) else flat_w[k] == flat_g[k]), k
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)


def _flat(d, prefix=""):
    out = {}
    for k, v in (enumerate(d) if isinstance(d, list) else d.items()):
        if isinstance(v, (dict, list)):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
