"""Official SupMAE pretraining files (MAE keys + ``cls_head.0/1/3``) load through mimkit.load:
the reconstruction equals the MAE importer's on the same weights (itself tested against the
official formulas in mimkit-mae), and the classification term equals the official
``forward_classification`` + CE(logits / 10) written out here (head in eval mode)."""
import torch
import torch.nn.functional as F

import mimkit

D, HEADS, DD, P, IMG, C, K = 192, 3, 64, 8, 32, 3, 10
N = (IMG // P) ** 2


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, N + 1, D), "patch_embed.proj.weight": r(D, C, P, P),
          "patch_embed.proj.bias": r(D), "norm.weight": 1 + r(D), "norm.bias": r(D), "mask_token": r(1, 1, DD),
          "decoder_pos_embed": r(1, N + 1, DD), "decoder_embed.weight": r(DD, D), "decoder_embed.bias": r(DD),
          "decoder_norm.weight": 1 + r(DD), "decoder_norm.bias": r(DD),
          "decoder_pred.weight": r(P * P * C, DD), "decoder_pred.bias": r(P * P * C),
          "cls_head.0.weight": r(4 * D, D), "cls_head.0.bias": r(4 * D), "cls_head.1.weight": 1 + r(4 * D),
          "cls_head.1.bias": r(4 * D), "cls_head.1.running_mean": r(4 * D), "cls_head.1.running_var": 1 + r(4 * D).abs(),
          "cls_head.1.num_batches_tracked": torch.tensor(100), "cls_head.3.weight": r(K, 4 * D), "cls_head.3.bias": r(K)}
    for pre, d in [("blocks.0.", D), ("decoder_blocks.0.", DD)]:
        sd.update({f"{pre}norm1.weight": 1 + r(d), f"{pre}norm1.bias": r(d), f"{pre}attn.qkv.weight": r(3 * d, d),
                   f"{pre}attn.qkv.bias": r(3 * d), f"{pre}attn.proj.weight": r(d, d), f"{pre}attn.proj.bias": r(d),
                   f"{pre}norm2.weight": 1 + r(d), f"{pre}norm2.bias": r(d), f"{pre}mlp.fc1.weight": r(4 * d, d),
                   f"{pre}mlp.fc1.bias": r(4 * d), f"{pre}mlp.fc2.weight": r(d, 4 * d), f"{pre}mlp.fc2.bias": r(d)})
    return sd


def test_supmae_file_loads_with_both_branches(tmp_path):
    sd = state()
    torch.save({"model": sd, "epoch": 399}, tmp_path / "supmae.pth")
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("cls_head.")}}, tmp_path / "mae.pth")
    sup, mae = mimkit.load(tmp_path / "supmae.pth"), mimkit.load(tmp_path / "mae.pth")
    assert sup.recipe.model["losses"]["cls"]["num_classes"] == K
    x, y = torch.randn(4, C, IMG, IMG), torch.randint(0, K, (4,))
    noise = torch.rand(4, N)
    with torch.no_grad():
        a = sup({"image": x, "label": y}, noise=noise)
        b = mae({"image": x}, noise=noise)
    torch.testing.assert_close(a.losses["rec"], b.losses["rec"], rtol=0, atol=0)
    # official forward_classification (global_pool) on the latent, head in eval mode, CE(logits / 10)
    h = F.linear(a.latent[:, 1:].mean(1), sd["cls_head.0.weight"], sd["cls_head.0.bias"])
    h = F.batch_norm(h, sd["cls_head.1.running_mean"], sd["cls_head.1.running_var"], sd["cls_head.1.weight"],
                     sd["cls_head.1.bias"], training=False, eps=1e-5)
    logits = F.linear(F.relu(h), sd["cls_head.3.weight"], sd["cls_head.3.bias"])
    assert (a.extra["logits"] - logits).abs().max() < 1e-5
    assert abs(float(a.losses["cls"]) - float(F.cross_entropy(logits / 10, y))) < 1e-6
