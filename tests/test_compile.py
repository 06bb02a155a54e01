"""train.compile: a frame torch.compile cannot compile runs eagerly and the run says so, rather
than ending at its first step (torch 2.11's dynamo failed on attrs' generated ``__init__`` on a
lent H200; the same forward compiles with torch 2.14)."""
import json
import re

import torch

import mimkit
from mimkit.testing import read_metrics

from conftest import tiny_recipe


def test_frames_that_fail_to_compile_run_eagerly_with_the_same_losses(tmp_path, monkeypatch):
    def refusing_backend(gm, example_inputs):
        raise RuntimeError("this backend compiles nothing")

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=refusing_backend))
    torch._dynamo.reset()
    compiled = mimkit.train(tiny_recipe(tmp_path, "compiled", epochs=0.25, compile=True))
    eager = mimkit.train(tiny_recipe(tmp_path, "eager", epochs=0.25, compile=False))

    rows_c, rows_e = read_metrics(compiled), read_metrics(eager)
    assert len(rows_c) == len(rows_e) >= 1
    assert [r["loss"] for r in rows_c] == [r["loss"] for r in rows_e]  # eager fallback: the same numbers
    status = json.loads((compiled / "meta.json").read_text())["fast_path"]["compile"]
    found = re.fullmatch(r"partial: (\d+) of (\d+) frames compiled, the rest eager", status)
    assert found and int(found[1]) < int(found[2]), status  # (frames with nothing to compile count as compiled)
    assert json.loads((eager / "meta.json").read_text())["fast_path"]["compile"] is False
    assert not torch._dynamo.config.suppress_errors  # only while the trainer's forward runs
