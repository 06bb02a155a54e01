"""TTT's Y-shaped network and joint training (Sun et al., ICML 2020; ttt_cifar_release).

    x ─ conv1 ─ layer1 ─ layer2 ─┬─ layer3 ─ norm ─ relu ─ pool ─ fc          main head (classes)
         shared extractor θe      └─ layer3' ─ norm' ─ relu ─ pool ─ linear    rotation head (4-way)

The rotation head starts as a deep copy of the main layer3 + norm (``head_on_layer2``). Joint
training: CE(main) + CE(rotation); with ``rotation: expand`` every image is given in all four
rotations (the released GN runs: ``--rotation_type expand``), with ``rand`` one random rotation.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, Context, MethodModel, Outputs, one_of

# -- rotations ------------------------------------------------------------------------------------


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image x[i] (B, C, H, W) by k[i] * 90 degrees counter-clockwise (the official
    ``tensor_rot_90`` = flip(W) then transpose(H, W)), vectorized over the batch."""
    out = x
    for r in (1, 2, 3):
        sel = (k == r).view(-1, 1, 1, 1)
        out = torch.where(sel, torch.rot90(x, r, dims=(-2, -1)), out)
    return out


def rotate_batch(x: torch.Tensor, how: str | int = "expand", labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``rotate_batch``: ``expand`` -> the batch 4 times, labels 0..0,1..1,2..2,3..3;
    ``rand`` -> one rotation per image (from ``labels`` when given, else drawn); an int -> that
    rotation for all. Returns (rotated images, labels)."""
    b = x.shape[0]
    if how == "expand":
        labels = torch.arange(4, device=x.device).repeat_interleave(b)
        x = x.repeat(4, 1, 1, 1)
    elif how == "rand":
        if labels is None:
            labels = torch.randint(4, (b,), generator=generator).to(x.device)
        labels = labels.reshape(b).long().to(x.device)
    elif isinstance(how, int) and 0 <= how < 4:
        labels = torch.full((b,), how, dtype=torch.long, device=x.device)
    else:
        raise ValueError(f"rotation must be 'expand', 'rand' or 0-3, got {how!r}")
    return rotate(x, labels), labels


# -- ResNet-26 for CIFAR-size inputs (models/ResNet.py) ------------------------------------------


def norm_layer(groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if groups > 0 else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Pre-activation block: norm-relu-conv3x3-norm-relu-conv3x3, plus the (downsampled) input."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int = 1):
        super().__init__()
        self.bn1 = norm_layer(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = norm_layer(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.stride, self.expand = stride, cout // cin
        self.downsample = stride != 1 or cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        if self.downsample:  # official Downsample: avg-pool, then zero channels appended
            x = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
            x = torch.cat([x] + [x.mul(0)] * (self.expand - 1), 1)
        return x + r


class ResNetCifar(nn.Module):
    """ResNet-(6N+2), widths 16/32/64 x width; 32x32 input -> 8x8 before the pool."""

    def __init__(self, depth: int = 26, width: int = 1, classes: int = 10, channels: int = 3, groups: int = 8):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        planes, layers = 16, []
        for i, p in enumerate((16 * width, 32 * width, 64 * width)):
            blocks = [BasicBlock(planes, p, groups, 1 if i == 0 else 2)]
            blocks += [BasicBlock(p, p, groups) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            planes = p
        self.layer1, self.layer2, self.layer3 = layers
        self.bn = norm_layer(groups, 64 * width)
        self.fc = nn.Linear(64 * width, classes)
        for m in self.modules():  # official init: N(0, sqrt(2 / (k*k*out))) for convs
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))

    def shared(self, x: torch.Tensor) -> torch.Tensor:  # θe: conv1 + layer1 + layer2
        return self.layer2(self.layer1(self.conv1(x)))

    def head(self, z: torch.Tensor) -> torch.Tensor:  # main head on layer2 features -> pooled (B, 64w)
        return F.relu(self.bn(self.layer3(z))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.shared(x)))


class RotationHead(nn.Module):
    """``head_on_layer2``: deep copies of layer3 and the norm, relu, pool, a 4-way linear layer."""

    def __init__(self, net: ResNetCifar, width: int):
        super().__init__()
        self.layer3 = copy.deepcopy(net.layer3)
        self.bn = copy.deepcopy(net.bn)
        self.fc = nn.Linear(64 * width, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.layer3(z))).mean((2, 3)))


class _RotationDraw(nn.Module):
    """Draws each sample's rotation label in the data loader (``rand`` mode), from the
    per-(seed, epoch, index) generator, so a resumed run sees the same rotations."""

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(4, (1,), generator=generator)


class TTT(MethodModel):
    """Joint training of the Y-shaped ResNet: CE(main) + CE(rotation)."""

    @attrs.define(kw_only=True)
    class Config:
        depth: int = 26
        width: int = 1
        groups: int = 8  # GroupNorm groups (the headline runs); 0 = BatchNorm
        in_chans: int = 3
        num_classes: int = 10
        rotation: str = attrs.field(default="expand", validator=one_of("expand", "rand"))
        rot_weight: float = 1.0
        input_key: str = "image"

    def __init__(self, config: "TTT.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        if (config.depth - 2) % 6:
            raise ValueError(f"model.depth must be 6N+2 (8, 14, 20, 26, ...), got {config.depth}")
        self.net = ResNetCifar(config.depth, config.width, config.num_classes, config.in_chans, config.groups)
        self.rot_head = RotationHead(self.net, config.width)
        self.masker = _RotationDraw() if config.rotation == "rand" else None
        self.input_key = config.input_key

    # -- the two branches ------------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Main-task logits (B, classes)."""
        return self.net(x)

    def ssh(self, x: torch.Tensor) -> torch.Tensor:
        """Rotation logits (B, 4): shared extractor + rotation head."""
        return self.rot_head(self.net.shared(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        n = self.net
        return [*n.conv1.parameters(), *n.layer1.parameters(), *n.layer2.parameters()]

    def ssh_parameters(self) -> list[nn.Parameter]:
        return self.shared_parameters() + list(self.rot_head.parameters())

    @torch.no_grad()
    def features(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        return self.net.head(self.net.shared(x))

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None) -> Outputs:
        x, y = batch[self.input_key], batch["label"]  # (B, C, 32, 32), (B,)
        y = torch.as_tensor(y, device=x.device)
        main = F.cross_entropy(self.classify(x), y)
        labels = batch.get("mask_noise") if noise is None else noise
        x_rot, y_rot = rotate_batch(x, self.config.rotation, labels=labels,
                                    generator=ctx.generator if ctx is not None else None)
        rot = F.cross_entropy(self.ssh(x_rot), y_rot)
        out = Outputs(loss=main + self.config.rot_weight * rot)
        out.losses.update({"main": main, "rot": rot})
        return out
