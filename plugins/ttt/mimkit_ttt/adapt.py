"""Test-time training (``test_calls/test_adapt.py``): adapt on each test image, then predict.

Standard TTT, per test image:
  1. reset the network and the rotation head to the trained weights;
  2. (gate) adapt only if the rotation head's confidence in "0 degrees" on the image is below
     ``threshold`` (default 1: always);
  3. ``niter`` SGD steps (lr ``lr``, no momentum, no weight decay) on the rotation CE of a batch
     of ``batch_size`` copies of the image, each randomly cropped (pad 4) and flipped, then
     rotated by a random multiple of 90 degrees;
  4. predict with the main head on the un-augmented image.
Online TTT skips the reset: the weights carry from one test image to the next, in stream order.
``fix_ssh`` updates the shared extractor only (the paper's θe), else the extractor + rotation
head (the code's default); ``fix_bn`` keeps the norm layers in eval mode.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from .model import TTT, rotate, rotate_batch

#: setting -> (niter, lr), as ``script_test_c10.py``.
SETTINGS = {"fast": (1, 0.001), "medium": (3, 0.001), "slow": (10, 0.001), "jump": (1, 0.01), "online": (1, 0.001)}


def random_crop_flip(x: torch.Tensor, n: int, pad: int, fill: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` copies of one image (C, H, W): RandomCrop(H, padding=pad) + RandomHorizontalFlip,
    the padding filled with ``fill`` (the normalized value of black)."""
    c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    rows = offs[:, 0, None] + torch.arange(h)  # (n, H)
    cols = offs[:, 1, None] + torch.arange(w)  # (n, W)
    out = padded[:, rows[:, :, None], cols[:, None, :]]  # (C, n, H, W)
    out = out.permute(1, 0, 2, 3)
    return torch.where(flips.view(n, 1, 1, 1), out.flip(-1), out)


@attrs.define(kw_only=True)
class AdaptConfig:
    mode: str = "standard"  # standard (reset per image) | online (no reset)
    niter: int = 10
    lr: float = 0.001
    batch_size: int = 32
    fix_ssh: bool = False
    fix_bn: bool = False
    threshold: float = 1.0
    pad: int = 4
    fill: float = 0.0  # the value padding takes (normalized black)


class TestTimeTrainer:
    """Holds the trained state and adapts a :class:`TTT` model image by image."""

    __test__ = False  # not a pytest class

    def __init__(self, model: TTT, config: AdaptConfig, seed: int = 0):
        self.model, self.config = model, config
        self.base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = model.shared_parameters() if config.fix_ssh else model.ssh_parameters()
        self.params = params
        self.optimizer = torch.optim.SGD(params, lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.adapted = 0

    def reset(self) -> None:
        """Back to the trained weights, bit for bit."""
        self.model.load_state_dict(self.base_state)
        self.optimizer = torch.optim.SGD(self.params, lr=self.config.lr)

    def _modes(self) -> None:
        m, c = self.model, self.config
        if c.fix_bn:
            m.eval()
        elif c.fix_ssh:
            m.eval()
            for mod in (m.net.conv1, m.net.layer1, m.net.layer2):
                mod.train()
        else:
            m.train()

    @torch.no_grad()
    def rotation_confidence(self, x: torch.Tensor) -> float:
        self.model.eval()
        return float(F.softmax(self.model.ssh(x[None]), 1)[0, 0])

    def adapt(self, x: torch.Tensor) -> float:
        """``niter`` steps on one image (C, H, W); returns the last rotation loss."""
        c = self.config
        self._modes()
        loss = torch.zeros(())
        for _ in range(c.niter):
            copies = random_crop_flip(x, c.batch_size, c.pad, c.fill, self.generator)
            labels = torch.randint(4, (c.batch_size,), generator=self.generator)
            inputs, labels = rotate_batch(copies, "rand", labels=labels)
            loss = F.cross_entropy(self.model.ssh(inputs), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.adapted += 1
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> int:
        self.model.eval()
        return int(self.model.classify(x[None]).argmax(1))

    def step(self, x: torch.Tensor) -> int:
        """One test image through TTT: (reset), gate, adapt, predict."""
        if self.config.mode == "standard":
            self.reset()
        if self.rotation_confidence(x) < self.config.threshold + 0.001:
            self.adapt(x)
        return self.predict(x)


def run_stream(model: TTT, images: torch.Tensor, config: AdaptConfig, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Predictions (N,) for a stream of images (N, C, H, W); the model ends as it was."""
    tt = TestTimeTrainer(model, config, seed)
    try:
        preds = torch.tensor([tt.step(x) for x in images])
    finally:
        tt.reset()
    return preds, {"adapted": tt.adapted}


@torch.no_grad()
def rotation_accuracy(model: TTT, images: torch.Tensor) -> float:
    """The rotation head's accuracy on all four rotations of the images (the trerror check)."""
    model.eval()
    x, y = rotate_batch(images, "expand")
    return float((model.ssh(x).argmax(1) == y).float().mean())


__all__ = ["SETTINGS", "AdaptConfig", "TestTimeTrainer", "run_stream", "random_crop_flip", "rotate",
           "rotation_accuracy"]
