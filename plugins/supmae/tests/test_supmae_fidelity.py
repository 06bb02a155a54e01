"""SupMAE's classification head is initialized as the official model (``_init_weights`` applied
to the whole module): xavier-uniform Linear weights, zero biases."""
import math

import torch
from torch import nn

import mimkit


def test_head_is_xavier_with_zero_bias():
    torch.manual_seed(0)
    model = mimkit.build({"method": "supmae_tiny_fashion_mnist",
                          "model": {"encoder": {"embed_dim": 64, "depth": 1, "num_heads": 2},
                                    "decoder": {"embed_dim": 32, "num_heads": 2},
                                    "losses": {"cls": {"num_classes": 1000}}}})
    linears = [m for m in model.losses["cls"].head if isinstance(m, nn.Linear)]
    assert [tuple(l.weight.shape) for l in linears] == [(256, 64), (1000, 256)]
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = lin.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.98 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.03 * bound
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
