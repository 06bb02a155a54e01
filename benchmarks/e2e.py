"""End to end at the demo's size: the whole training loop (data -> masks -> forward/backward ->
optimizer) of mimkit against lightly's MAE with its own data pipeline, on the same data
(Fashion-MNIST padded to 32x32, 1 channel) and the same model (ViT 192-d x 6 blocks, patch 4,
decoder 128-d x 2 blocks, mask 0.75, batch 128, norm-pix MSE).

    python benchmarks/e2e.py [--rounds 4] [--steps 2] [--threads 2] [--batch 128] [--precision no]

Subjects (each with its own DataLoader, ``num_workers=0``):

* ``mimkit``: what ``mim train`` runs by default: the batched data path (``get_batch``), per-sample
  seeded masks, fused AdamW (the recipe's defaults).
* ``mimkit_per_sample``: the same with ``train.batched_data=false`` (one torchvision pipeline per image).
* ``lightly``: lightly's MAE example (examples/pytorch/mae.py) as a user writes it: torchvision's
  FashionMNIST-style PIL images through ``lightly.transforms.MAETransform``, default collation,
  ``utils.random_token_mask`` per batch, ``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM``,
  ``torch.optim.AdamW`` with torch's defaults (plus the norm-pix target, as mimkit's recipe).
* ``lightly_fused``: the same with ``AdamW(fused=True)`` (its best setting on this CPU).

Every subject steps ``--steps`` batches per round, rounds rotate the order (load from other users hits
all alike); the figure is the median images/s over rounds: read the ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "fashion_mnist_mae.yaml"


def _mimkit(batched: bool, precision: str, batch: int):
    from mimkit.api import build_dataset, build_model
    from mimkit.config import resolve
    from mimkit.data import BatchedView, SeededDataset, collate, epoch_batches
    from mimkit.optim import make_optimizer
    from mimkit.types import Context

    recipe = resolve(str(RECIPE), [f"train.mixed_precision={precision}", f"train.batch_size={batch}"])
    torch.manual_seed(0)
    model = build_model(recipe)
    ds = build_dataset(recipe)
    seeded = SeededDataset(ds, recipe.seed, model.masker.sample_noise)
    opt = make_optimizer(model, recipe.optim, lr=1e-4)
    batches = epoch_batches(len(ds), recipe.seed, 0, batch, 0, 1)
    if batched:
        loader = torch.utils.data.DataLoader(BatchedView(seeded), batch_size=None, sampler=batches, num_workers=0)
    else:
        loader = torch.utils.data.DataLoader(seeded, batch_sampler=batches, collate_fn=collate, num_workers=0)
    it, ctx = iter(loader), Context(generator=None)
    model.train()

    def step() -> None:
        b = next(it)
        b.pop("_skipped", None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(b, ctx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


class _PilFashion(torch.utils.data.Dataset):
    """Fashion-MNIST as a user of torchvision datasets gets it: a PIL image per item (padded to 32)."""

    def __init__(self, transform):
        from PIL import Image, ImageOps

        from mimkit.components.datasets import FashionMNIST

        self.images = FashionMNIST(FashionMNIST.Config()).images.numpy()
        self.Image, self.ImageOps, self.transform = Image, ImageOps, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.ImageOps.expand(self.Image.fromarray(self.images[i], mode="L"), border=2)
        return self.transform(img), 0


def _lightly(fused: bool, precision: str, batch: int):
    import timm
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lightly.models import utils
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
        from lightly.transforms import MAETransform

    warnings.filterwarnings("ignore", category=FutureWarning, module="lightly")
    warnings.filterwarnings("ignore", message=".*MAEDecoderTIMM.*")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=4,
                            in_chans=1, embed_dim=192, depth=6, num_heads=3)
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=4, in_chans=1, embed_dim=192,
                             decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    model = nn.ModuleDict({"backbone": backbone, "decoder": decoder})
    seq_len = backbone.sequence_length
    transform = MAETransform(input_size=32, normalize={"mean": [0.2860], "std": [0.3530]})
    loader = torch.utils.data.DataLoader(_PilFashion(transform), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, **({"fused": True} if fused else {}))
    it = iter(loader)
    model.train()

    def step() -> None:
        views, _ = next(it)
        x = views[0]
        b = x.shape[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            idx_keep, idx_mask = utils.random_token_mask(size=(b, seq_len), mask_ratio=0.75)
            enc = backbone.encode(images=x, idx_keep=idx_keep)
            dec = decoder.embed(enc)
            tokens = utils.repeat_token(decoder.mask_token, (b, seq_len))
            tokens = utils.set_at_index(tokens, idx_keep, dec.type_as(tokens))
            pred = decoder.predict(utils.get_at_index(decoder.decode(tokens), idx_mask))
            target = utils.normalize_mean_var(utils.get_at_index(utils.patchify(x, 4), idx_mask - 1), dim=-1)
            loss = nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="batches per subject per round")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--subjects", default="mimkit,mimkit_per_sample,lightly,lightly_fused")
    ap.add_argument("--out", help="also write the markdown here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    makers = {"mimkit": lambda: _mimkit(True, a.precision, a.batch),
              "mimkit_per_sample": lambda: _mimkit(False, a.precision, a.batch),
              "lightly": lambda: _lightly(False, a.precision, a.batch),
              "lightly_fused": lambda: _lightly(True, a.precision, a.batch)}
    names = [n for n in a.subjects.split(",") if n]
    steps, params, times = {}, {}, {n: [] for n in names}
    load0 = os.getloadavg()[0]
    for n in names:
        model, steps[n] = makers[n]()
        params[n] = sum(p.numel() for p in model.parameters())
        steps[n]()  # warm-up
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                steps[n]()
            times[n].append(a.steps * a.batch / (time.perf_counter() - t0))
    med = {n: statistics.median(v) for n, v in times.items()}
    ref = med.get("lightly") or next(iter(med.values()))
    lines = [f"End to end, demo size (batch {a.batch}, {a.precision if a.precision != 'no' else 'fp32'}, "
             f"{a.threads} threads, ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'default')}), "
             f"{a.rounds} rounds x {a.steps} steps, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}",
             "", "| subject | params (M) | images/s (median) | × lightly |", "|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {params[n] / 1e6:.2f} | {med[n]:.1f} | {med[n] / ref:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
