"""TTT: rotations, the Y-shaped network, joint training, standard and online test-time training."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mimkit.api import build
from mimkit.testing import check_preset_trains, tiny_overrides
from mimkit_ttt import AdaptConfig, TestTimeTrainer, random_crop_flip, rotate_batch, run_stream

TINY = {"model": {"depth": 8}}


def _direct_rot90(img: torch.Tensor, k: int) -> torch.Tensor:
    """Counter-clockwise rotation by k*90 degrees by explicit indexing: out[i, j] = in[j, W-1-i]
    for 90; applied k times."""
    out = img
    for _ in range(k):
        c, h, w = out.shape
        i, j = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="ij")
        out = out[:, j, w - 1 - i]
    return out


def test_rotate_batch_matches_direct_computation_and_official_helpers():
    x = torch.randn(5, 2, 6, 6)
    rx, labels = rotate_batch(x, "expand")
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for n in range(20):
        k, i = int(labels[n]), n % 5
        assert torch.equal(rx[n], _direct_rot90(x[i], k))
    # the official tensor_rot_90/180/270 on (C, H, W)
    assert torch.equal(rx[5], x[0].flip(2).transpose(1, 2))
    assert torch.equal(rx[10], x[0].flip(2).flip(1))
    assert torch.equal(rx[15], x[0].transpose(1, 2).flip(2))
    lab = torch.tensor([3, 0, 2, 1, 1])
    r2, l2 = rotate_batch(x, "rand", labels=lab)
    assert torch.equal(l2, lab) and all(torch.equal(r2[i], _direct_rot90(x[i], int(lab[i]))) for i in range(5))
    r3, l3 = rotate_batch(x, 2)
    assert (l3 == 2).all() and torch.equal(r3, torch.rot90(x, 2, (2, 3)))


def test_y_shape_and_joint_loss_against_direct_computation():
    torch.manual_seed(0)
    model = build({"method": "ttt_tiny_fashion_mnist", **TINY}).eval()
    # the rotation head starts as a copy of the main layer3 + norm, not shared with it
    for a, b in zip(model.net.layer3.parameters(), model.rot_head.layer3.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    x, y = torch.randn(3, 1, 32, 32), torch.tensor([1, 4, 7])
    out = model({"image": x, "label": y})
    xr = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    yr = torch.arange(4).repeat_interleave(3)
    main = F.cross_entropy(model.net(x), y)
    rot = F.cross_entropy(model.rot_head(model.net.layer2(model.net.layer1(model.net.conv1(xr)))), yr)
    torch.testing.assert_close(out.losses["main"], main)
    torch.testing.assert_close(out.losses["rot"], rot)
    torch.testing.assert_close(out.loss, main + rot)


def test_tiny_preset_trains_and_resumes(tmp_path):
    over = tiny_overrides("ttt_tiny_fashion_mnist", limit=64, batch_size=16)
    check_preset_trains("ttt_tiny_fashion_mnist", tmp_path, {**over, **TINY}, steps=4)


def test_crop_flip_copies():
    x = torch.arange(16.0).view(1, 4, 4)
    out = random_crop_flip(x, 64, 1, -1.0, torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 4, 4)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    crops = [padded[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
    allowed = crops + [c.flip(-1) for c in crops]
    assert all(any(torch.equal(o, a) for a in allowed) for o in out)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 6  # the copies differ


def _model():
    torch.manual_seed(0)
    return build({"method": "ttt_tiny_fashion_mnist", **TINY})


def test_standard_resets_bit_for_bit_and_updates_the_right_parameters():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 1, 32, 32)
    tt = TestTimeTrainer(model, AdaptConfig(mode="standard", niter=2, lr=0.01, batch_size=8, fix_ssh=True))
    tt.step(x[0])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("net.conv1", "net.layer1", "net.layer2")) for k in changed), changed
    tt.reset()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # without fix_ssh the rotation head adapts too, the main head never does
    tt = TestTimeTrainer(model, AdaptConfig(mode="standard", niter=1, lr=0.01, batch_size=8))
    tt.step(x[1])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("rot_head") for k in changed)
    assert not any(k.startswith(("net.layer3", "net.bn", "net.fc")) for k in changed)
    tt.reset()
    preds, _ = run_stream(model, x, AdaptConfig(mode="standard", niter=2, lr=0.01, batch_size=8), seed=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # run_stream restores


def test_online_carries_state_and_standard_does_not():
    model = _model()
    base = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 1, 32, 32)
    cfg = AdaptConfig(mode="online", niter=1, lr=0.05, batch_size=8)
    tt = TestTimeTrainer(model, cfg, seed=1)
    tt.step(x[0])
    s1 = copy.deepcopy(model.state_dict())
    tt.step(x[1])
    s2 = model.state_dict()
    # online: the second image starts from the first's adapted weights
    assert not torch.equal(s1["net.conv1.weight"], base["net.conv1.weight"])
    # reproduce the 2 online steps by hand from the base weights, with the same draws
    ref = _model()
    ref.load_state_dict(base)
    ref_tt = TestTimeTrainer(ref, AdaptConfig(mode="standard", niter=1, lr=0.05, batch_size=8), seed=1)
    ref_tt.adapt(x[0])  # no reset between the two: what online must equal
    ref_tt.adapt(x[1])
    assert all(torch.equal(ref.state_dict()[k], s2[k]) for k in s2)
    # standard would have reset in between: different weights
    std = _model()
    std.load_state_dict(base)
    st = TestTimeTrainer(std, AdaptConfig(mode="standard", niter=1, lr=0.05, batch_size=8), seed=1)
    st.step(x[0])
    st.step(x[1])
    assert not torch.equal(std.state_dict()["net.conv1.weight"], s2["net.conv1.weight"])


def test_confidence_gate_skips_adaptation():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    tt = TestTimeTrainer(model, AdaptConfig(mode="online", niter=1, lr=0.05, batch_size=8, threshold=-1.0))
    tt.step(torch.randn(1, 32, 32))
    assert tt.adapted == 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
