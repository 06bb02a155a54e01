"""Every registered preset of every installed plugin builds; every tiny one trains and resumes.

Paper-size presets are built on the meta device (no memory, no init cost): the recipe resolves,
every component validates and constructs, and the parameter count is what the shapes say.
"""
import pytest
import torch

import mimkit
from mimkit.plugins import registry
from mimkit.testing import check_preset_trains, tiny_overrides

PRESETS = registry().names("presets")
TINY = [p for p in PRESETS if "tiny" in p]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name):
    with torch.device("meta"):
        model = mimkit.build({"method": name})
    params = list(model.parameters())
    assert params and all(p.device.type == "meta" for p in params)  # built lazily, nothing allocated


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_preset_trains_and_resumes_exactly(name, tmp_path):
    check_preset_trains(name, tmp_path, tiny_overrides(name), steps=4, expect_fall=False)
