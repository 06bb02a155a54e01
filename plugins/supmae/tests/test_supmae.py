"""SupMAE: the supervised term sees only visible tokens and matches a direct computation."""
import json

import pytest
import torch
import torch.nn.functional as F

import mimkit

TINY = {"method": "supmae_tiny_fashion_mnist",
        "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                  "decoder": {"embed_dim": 32, "num_heads": 2}}}


def test_total_is_reconstruction_plus_weighted_tempered_ce():
    model = mimkit.build(TINY)
    x, y = torch.randn(6, 1, 32, 32), torch.randint(0, 10, (6,))
    out = model({"image": x, "label": y}, noise=torch.rand(6, 64))
    head = model.losses["cls"]
    feat = out.latent[:, 1:].mean(1)  # global average of the 16 visible patch tokens
    assert out.latent.shape[1] == 1 + 16
    logits = head.head(feat)
    ce = F.cross_entropy(logits / 10.0, y)
    assert torch.allclose(out.losses["cls"], ce, atol=1e-6)
    assert torch.allclose(out.loss, out.losses["rec"] + 0.01 * ce, atol=1e-6)
    assert model.decoder.config.depth == 1


def test_hidden_patches_do_not_reach_the_classifier():
    model = mimkit.build(TINY).eval()
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([1, 2])
    noise = torch.rand(2, 64)
    a = model({"image": x, "label": y}, noise=noise)
    hidden = a.mask.hidden[0].reshape(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    x2 = x.clone()
    x2[0, 0][hidden] = 5.0  # change only hidden pixels of sample 0
    b = model({"image": x2, "label": y}, noise=noise)
    assert torch.allclose(a.extra["logits"], b.extra["logits"], atol=1e-5)
    assert not torch.allclose(a.losses["rec"], b.losses["rec"])  # the target did change


def test_tiny_preset_trains_and_the_supervised_term_falls(tmp_path):
    run = mimkit.train(TINY | {"name": "sup", "output_dir": str(tmp_path), "data": {"limit": 512},
                               "optim": {"warmup_epochs": 0.2},
                               "train": {"epochs": 3, "batch_size": 64, "log_every": 4, "visualize": False,
                                         "progress": False}})
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss/cls"] < rows[0]["loss/cls"] and rows[-1]["loss/rec"] < rows[0]["loss/rec"]
    with pytest.raises(mimkit.ConfigError, match="model.losses.cls.pool"):
        mimkit.build(TINY | {"model": TINY["model"] | {"losses": {"cls": {"name": "visible_token_classification", "pool": "max"}}}})
