"""Fashion-MNIST-C and the corruption protocol: determinism, range, errors, the numbers."""
from __future__ import annotations

import math

import pytest
import torch

from mimkit.plugin_api import ConfigError, registry
from mimkit_corruptions import CORRUPTIONS, corrupt, parse_corruptions, parse_severities
from mimkit_corruptions.corruptions import _disk, clipped_zoom, plasma_fractal


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x[:, :, 8:20, 8:20] = 0.9  # some structure for the blurs
    return x


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_deterministic_per_image_and_in_range(name):
    x = _images()
    seeds = [11, 12, 13, 14, 15, 16]
    a = corrupt(x, name, 5, seeds)
    b = corrupt(x[2:4], name, 5, seeds[2:4])  # another batch: image 2 and 3 must not change
    assert torch.equal(a[2:4], b), name
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 1e-3, f"{name} did not change the images"
    c = corrupt(x, name, 5, [s + 100 for s in seeds])
    if name not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"):
        assert not torch.equal(a, c), f"{name} ignores its seed"
    else:
        assert torch.equal(a, c), f"{name} is deterministic and should not depend on the seed"


def test_severity_grows_the_damage():
    x = _images()
    for name in ("gaussian_noise", "impulse_noise", "defocus_blur", "contrast", "fog", "zoom_blur", "brightness"):
        d = [float((corrupt(x, name, s, list(range(6))) - x).abs().mean()) for s in (1, 3, 5)]
        assert d[0] < d[1] < d[2], (name, d)


def test_numbers_against_direct_computation():
    x = _images()
    s = list(range(6))
    # contrast: (x - mean) * 0.15 + mean at severity 5
    m = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 5, s), ((x - m) * 0.15 + m).clamp(0, 1))
    # brightness on grayscale: V + 0.3
    torch.testing.assert_close(corrupt(x, "brightness", 5, s), (x + 0.3).clamp(0, 1))
    # gaussian noise: x + 0.10 * N(0, 1) from the image's own generator
    g = torch.Generator().manual_seed(3)
    direct = (x[3] + 0.10 * torch.randn(x.shape[1:], generator=g)).clamp(0, 1)
    torch.testing.assert_close(corrupt(x, "gaussian_noise", 5, s)[3], direct)
    # impulse noise at severity 5 hits ~7% of the pixels
    y = corrupt(torch.full((64, 1, 28, 28), 0.5), "impulse_noise", 5, list(range(64)))
    assert abs(float((y != 0.5).float().mean()) - 0.07) < 0.01
    # pixelate at 0.65: 28 -> 18 px box averages; a constant image stays constant
    torch.testing.assert_close(corrupt(torch.full((1, 1, 28, 28), 0.3), "pixelate", 5, [0]), torch.full((1, 1, 28, 28), 0.3))
    # the defocus disk sums to 1 and is symmetric
    k = _disk(1.5, 0.1)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-5) and torch.allclose(k, k.flip(0).flip(1))
    # zoom by 1 is the identity; plasma maps span [0, 1]
    torch.testing.assert_close(clipped_zoom(x, 1.0), x, atol=1e-5, rtol=0)
    p = plasma_fractal([torch.Generator().manual_seed(0)], 32, 3)
    assert float(p.min()) == 0.0 and abs(float(p.max()) - 1.0) < 1e-6


def test_bad_names_and_severities_list_the_allowed():
    with pytest.raises(ConfigError, match="gaussian_noise.*jpeg_compression"):
        parse_corruptions("fogg")
    with pytest.raises(ConfigError, match=r"\[1, 2, 3, 4, 5\]"):
        parse_severities("0-3")
    with pytest.raises(ConfigError, match=r"\[1, 2, 3, 4, 5\]"):
        parse_severities(6)
    with pytest.raises(ConfigError, match="allowed"):
        corrupt(_images(), "no_such", 1, list(range(6)))
    assert parse_corruptions("weather,contrast") == ["snow", "frost", "fog", "contrast"]
    assert parse_severities("1-3,5") == [1, 2, 3, 5]
    cls = registry().get("datasets", "fashion_mnist_c")
    from mimkit.config import structure

    with pytest.raises(ConfigError, match=r"severity.*\[1, 2, 3, 4, 5\]"):
        structure(cls.Config, {"severity": 7}, "eval_data")
    with pytest.raises(ConfigError, match="corruption.*allowed: gaussian_noise"):
        structure(cls.Config, {"corruption": "rain"}, "eval_data")


def test_fashion_mnist_c_and_corrupted_wrapper_agree():
    from mimkit.config import structure

    reg = registry()
    fc = reg.get("datasets", "fashion_mnist_c")
    ds = fc(structure(fc.Config, {"corruption": "shot_noise", "severity": 4, "limit": 8}, "d"))
    again = fc(structure(fc.Config, {"corruption": "shot_noise", "severity": 4, "limit": 8}, "d"))
    assert torch.equal(ds.images, again.images)
    item = ds[3]
    assert item["image"].shape == (1, 32, 32) and item["label"] == int(ds.labels[3])
    wrap = reg.get("datasets", "corrupted")
    w = wrap(structure(wrap.Config, {"base": {"name": "fashion_mnist", "split": "test", "limit": 8, "augment": False},
                                     "corruption": "contrast", "severity": 2}, "d"))
    fc2 = fc(structure(fc.Config, {"corruption": "contrast", "severity": 2, "limit": 8}, "d"))
    # contrast is deterministic: the wrapper (on the padded image) and -C (on 28x28) differ only by the
    # zero border's weight in the mean; the centre pixels keep the same ordering
    a, b = w[0]["image"][0, 2:30, 2:30], fc2[0]["image"][0, 2:30, 2:30]
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99
