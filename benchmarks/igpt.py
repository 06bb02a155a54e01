"""iGPT benchmarks: our training step against Hugging Face's ImageGPT at the same size, and
sampling with against without the KV cache. Ratios measured side by side in one run.

    python benchmarks/igpt.py [--quick] [--layers 6 --dim 128 --heads 4 --n-px 14 --palette 16 --batch 8]
                              [--device cpu|cuda] [--out benchmarks/results/igpt.json]

* Training step = forward + backward + AdamW step on one fixed batch of palette tokens.
  ``mimkit``: ``mimkit_igpt.IGPT`` (SDPA attention, is_causal). ``hf``:
  ``transformers.ImageGPTForCausalImageModeling`` with the same depth, width, heads, palette and
  sequence length (``quick_gelu`` = gelu2, dropouts 0), its input the same tokens after its SOS id;
  skipped when transformers is not installed (``pip install transformers``, optional).
* Sampling: ``IGPTTransformer.sample`` of the bottom half of ``--batch`` images given their top
  half, with ``use_cache=True`` (one position per new token) and ``False`` (the whole prefix
  recomputed per token); the two return the same tokens for the same seed (checked here too).
Timing: ``harness.interleaved`` (round-robin after warm-up, median), so shared load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402


def ours(args: argparse.Namespace):
    import mimkit

    torch.manual_seed(0)
    model = mimkit.build({"model": {"name": "igpt", "n_px": args.n_px, "channels": 1, "n_layer": args.layers,
                                    "n_embd": args.dim, "n_head": args.heads, "palette": {"size": args.palette}}})
    model.palette.fit(torch.linspace(-1, 1, 4 * args.palette).view(-1, 1))
    return model.to(args.device)


def hf_model(args: argparse.Namespace):
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    cfg = ImageGPTConfig(vocab_size=args.palette + 1, n_positions=args.n_px ** 2, n_embd=args.dim,
                         n_layer=args.layers, n_head=args.heads, activation_function="quick_gelu",
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    # ImageGPT's attention is its own eager matmul-softmax-matmul (no SDPA path in transformers 5.x)
    return ImageGPTForCausalImageModeling(cfg).to(args.device), "eager"


def train_steps(args: argparse.Namespace) -> dict:
    b, n, k = args.batch, args.n_px ** 2, args.palette
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, k, (b, n), generator=g).to(args.device)
    model = ours(args).train()
    enc = model.encoder
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step_ours():  # the model's own forward from tokens on: embed, blocks, head, CE over all positions
        h = enc.hidden_states(enc.embed(tokens))[-1]
        loss = torch.nn.functional.cross_entropy(enc.logits(h).flatten(0, 1), tokens.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = {"mimkit": step_ours}
    info = {"mimkit_params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    try:
        hf, impl = hf_model(args)
        hf.train()
        hopt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95))
        ids = torch.cat([torch.full((b, 1), k, device=args.device), tokens[:, :-1]], 1)  # SOS = last id

        def step_hf():
            out = hf(input_ids=ids, labels=ids)
            hopt.zero_grad(set_to_none=True)
            out.loss.backward()
            hopt.step()

        steps["hf"] = step_hf
        info["hf_params_M"] = sum(p.numel() for p in hf.parameters()) / 1e6
        info["hf_attention"] = impl
    except ImportError as exc:
        info["hf_skipped"] = f"transformers not installed ({exc})"
    times = harness.interleaved(steps, args.warmup, args.repeats, args.device)
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {"median_step_s": med, "images_per_s": {k_: b / v for k_, v in med.items()}, **info}
    if "hf" in med:
        out["hf_over_mimkit"] = med["hf"] / med["mimkit"]  # > 1: we are faster
    return out


def sampling(args: argparse.Namespace) -> dict:
    model = ours(args).eval()
    enc = model.encoder
    n = args.n_px ** 2
    prompt = torch.randint(0, args.palette, (args.batch, n // 2), generator=torch.Generator().manual_seed(2))
    prompt = prompt.to(args.device)
    results = {}

    def run(cache: bool):
        gen = torch.Generator(device=args.device).manual_seed(3)
        results[cache] = enc.sample(prompt, n, generator=gen, use_cache=cache, top_k=8)

    times = harness.interleaved({"cached": lambda: run(True), "uncached": lambda: run(False)},
                                1, max(2, args.repeats // 2), args.device)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"tokens_sampled": args.batch * (n - n // 2), "median_s": med,
            "uncached_over_cached": med["uncached"] / med["cached"],
            "same_tokens": bool(torch.equal(results[True], results[False]))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke test)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-px", type=int, default=14)
    p.add_argument("--palette", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "igpt.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.heads, args.n_px, args.batch, args.repeats = 2, 32, 2, 6, 2, 2
    t0 = time.time()
    load0 = os.getloadavg()[0]
    record = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device},
        "size": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "n_px": args.n_px,
                 "tokens": args.n_px ** 2, "palette": args.palette, "batch": args.batch},
        "train_step": train_steps(args),
        "sampling": sampling(args),
    }
    try:
        import transformers

        record["machine"]["transformers"] = transformers.__version__
    except ImportError:
        pass
    record["machine"]["load_average"] = [load0, os.getloadavg()[0]]
    record["seconds"] = round(time.time() - t0, 1)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    ts, sm = record["train_step"], record["sampling"]
    print(json.dumps(record, indent=1))
    if "hf_over_mimkit" in ts:
        print(f"train step: mimkit {ts['median_step_s']['mimkit']:.3f}s, hf {ts['median_step_s']['hf']:.3f}s "
              f"-> hf/mimkit = {ts['hf_over_mimkit']:.2f}")
    print(f"sampling: cached {sm['median_s']['cached']:.2f}s, uncached {sm['median_s']['uncached']:.2f}s "
          f"-> {sm['uncached_over_cached']:.1f}x; same tokens: {sm['same_tokens']}")
    return record


if __name__ == "__main__":
    main()
