"""Video end to end: moving Fashion-MNIST (motion, labels, determinism), the video visualizer
(frame grid + GIF, visible cubes pasted back exactly), the video_pixels target equals the core
pixels target, corrupt video files."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import mimkit
from mimkit.plugin_api import DataError
from mimkit_videomae.data import VideoFolder
from mimkit_videomae.moving import MOTIONS, MovingFashionMNIST
from mimkit_videomae.visualize import VideoReconstruction, reconstruct


def _cfg(**kw) -> MovingFashionMNIST.Config:
    return MovingFashionMNIST.Config(**{"num_frames": 8, "limit": 12, "channels": 1, "augment": False, **kw})


def _centre(frames: torch.Tensor) -> torch.Tensor:
    """(T, S, S) -> (T, 2) intensity-weighted (x, y) centre."""
    t, s, _ = frames.shape
    w = frames.clamp(min=0).flatten(1)
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    return torch.stack([(w * xs.flatten()).sum(1), (w * ys.flatten()).sum(1)], 1) / w.sum(1, keepdim=True)


def test_moving_fashion_mnist_motions_labels_and_determinism():
    ds = MovingFashionMNIST(_cfg())
    assert ds.motion.tolist() == [i % 6 for i in range(12)]
    for i in range(6):
        c = _centre(ds.render(i))
        move = c[-1] - c[0]
        motion = MOTIONS[i]
        expect = {"right": (8, 0), "left": (-8, 0), "down": (0, 8), "up": (0, -8)}.get(motion, (0, 0))
        assert torch.allclose(move, torch.tensor(expect, dtype=torch.float32), atol=1.0), (motion, move)
        if motion.startswith("rotate"):  # rotating garments change shape but stay put
            assert not torch.allclose(ds.render(i)[0], ds.render(i)[-1], atol=0.05)
    again = MovingFashionMNIST(_cfg())
    assert torch.equal(ds[3]["video"], again[3]["video"])  # fixed clips (seeded by (seed, index))
    assert ds[3]["video"].shape == (1, 8, 32, 32)
    by_motion = MovingFashionMNIST(_cfg(label="motion"))
    both = MovingFashionMNIST(_cfg(label="class_motion"))
    assert by_motion.labels.tolist() == ds.motion.tolist()
    assert both.labels.tolist() == (ds.garments * 6 + ds.motion).tolist()
    with pytest.raises(DataError, match="unknown motion"):
        MovingFashionMNIST(_cfg(motions=["spin"]))


def _video_model():
    torch.manual_seed(0)
    return mimkit.build({"method": "videomae_tiny_moving_fmnist"}).eval()


def test_video_pixels_target_equals_the_core_pixels_target():
    ours = _video_model()
    spec = dict(ours.config.target)
    core = mimkit.build({"method": "videomae_tiny_moving_fmnist", "model": {"target": {**spec, "name": "pixels"}}})
    x = torch.randn(2, 3, 8, 32, 32)
    assert torch.equal(ours.target({"video": x}), core.target({"video": x}))
    assert ours.target.visualizer == "video_reconstruction"


def test_video_visualizer_writes_grid_and_gif_and_pastes_visible_cubes(tmp_path):
    model = _video_model()
    ds = MovingFashionMNIST(MovingFashionMNIST.Config(num_frames=8, limit=3, augment=False))
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    orig, masked, recon, mask = reconstruct(model, batch, seed=1)
    hidden = mask.hidden.view(3, 4, 4, 4)  # (B, t, h, w) token grid; cube 2x8x8
    vis = ~hidden.repeat_interleave(2, 1).repeat_interleave(8, 2).repeat_interleave(8, 3)  # (B, T, H, W)
    vis = vis.unsqueeze(1).expand_as(orig)
    assert torch.allclose(recon[vis], orig[vis], atol=1e-6)  # visible cubes are the original
    assert torch.isnan(masked[~vis]).all() and not torch.isnan(masked[vis]).any()
    assert not torch.allclose(recon[~vis], orig[~vis])  # hidden cubes are predictions
    png = VideoReconstruction(VideoReconstruction.Config(num_videos=2))(model, batch, tmp_path / "video.png",
                                                                      mean=ds.mean, std=ds.std)
    assert png.is_file() and png.stat().st_size > 10_000
    gif = Image.open(png.with_suffix(".gif"))
    assert gif.n_frames == 8 and gif.size == (3 * 32 * 4, 2 * 32 * 4)


def test_corrupt_video_is_named_or_skipped(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    cfg = VideoFolder.Config(files=[str(bad)], num_frames=4, img_size=32)
    with pytest.raises(DataError, match="broken.mp4"):
        VideoFolder(cfg)[0]
    skip = VideoFolder(VideoFolder.Config(files=[str(bad)], num_frames=4, img_size=32, bad_data="skip"))
    assert skip[0] == {"_bad": str(bad)}
