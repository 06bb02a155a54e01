"""VideoMAE's initialization and schedule as the official code: ``encoder_to_decoder`` keeps
nn.Linear's default init, the mask token is a normal cut at +-0.02, warm-up starts at 0."""
import math

import pytest
import torch

import mimkit
from mimkit.config import resolve


def test_decoder_init_and_warmup_from_zero():
    torch.manual_seed(0)
    m = mimkit.build({"method": "videomae_tiny_clips", "model": {"encoder": {"embed_dim": 384, "depth": 1, "num_heads": 6},
                                                               "decoder": {"embed_dim": 192, "depth": 1}}})
    w = m.decoder.embed.weight.detach()  # (192, 384): kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(384))
    bound = 1 / math.sqrt(384)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.98 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)  # xavier would be sqrt(6/576)/sqrt(3)
    t = m.decoder.mask_token.detach()
    assert float(t.abs().max()) <= 0.02 and float(t.std()) == pytest.approx(0.02 * 0.5379, rel=0.15)
    head = m.decoder.head.weight.detach()  # the decoder's own _init_weights: xavier
    assert float(head.abs().max()) <= math.sqrt(6 / sum(head.shape))
    assert resolve({"method": "videomae_vit_base_patch16_k400"}).optim.warmup_start_lr == 0.0
