"""The random masker and the Mask type: exact counts, reproducibility, index plumbing."""
import pytest
import torch

import mimkit
from mimkit import Mask
from mimkit.components import BuildEnv
from mimkit.components.masking import RandomMasker
from mimkit.errors import ConfigError
from mimkit.plugins import registry


class _Enc:
    num_patches = 196


def masker(ratio=0.75):
    return RandomMasker(RandomMasker.Config(ratio=ratio), BuildEnv(registry=None, encoder=_Enc()))


def test_exact_kept_count_with_official_truncation():
    for ratio, keep in [(0.75, 49), (0.9, 19), (0.6, 78), (0.5, 98)]:  # int(196 * (1 - r)); 0 is refused
        m = masker(ratio)(None, torch.rand(4, 196))
        assert m.num_keep == keep == int(196 * (1 - ratio))
        assert m.ids_keep.shape == (4, keep)
        assert torch.all((~m.hidden).sum(1) == keep)


def test_matches_official_recipe_for_given_noise():
    noise = torch.rand(3, 196)
    m = masker()(None, noise)
    ids_shuffle = torch.argsort(noise, 1)
    official = torch.ones(3, 196)
    official[:, :49] = 0
    official = torch.gather(official, 1, torch.argsort(ids_shuffle, 1))
    assert torch.equal(m.hidden.float(), official)
    assert torch.equal(m.ids_keep, ids_shuffle[:, :49])


def test_per_sample_masks_differ_and_generator_reproduces():
    mk = masker()
    a = mk(None, mk.draw(8, torch.Generator().manual_seed(1), "cpu"))
    b = mk(None, mk.draw(8, torch.Generator().manual_seed(1), "cpu"))
    c = mk(None, mk.draw(8, torch.Generator().manual_seed(2), "cpu"))
    assert torch.equal(a.hidden, b.hidden)
    assert not torch.equal(a.hidden, c.hidden)
    assert len({tuple(row.tolist()) for row in a.hidden}) == 8  # every sample has its own mask


def test_ids_restore_inverts_the_shuffle():
    m = masker()(None, torch.rand(5, 196))
    x = torch.arange(196).expand(5, -1)
    shuffled = torch.gather(x, 1, m.ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, m.ids_restore), x)
    assert torch.all(m.hidden.gather(1, m.ids_hidden)) and not torch.any(m.hidden.gather(1, m.ids_keep))


def test_from_hidden_orders_and_checks_counts():
    hidden = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    m = Mask.from_hidden(hidden)
    assert m.num_keep == 2
    assert m.ids_keep.tolist() == [[1, 3], [0, 1]]
    assert m.ids_hidden.tolist() == [[0, 2], [2, 3]]
    with pytest.raises(ValueError, match="same number"):
        Mask.from_hidden(torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool))


def test_bad_ratio_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.masker"):
        from mimkit.config import component

        component("maskers", {"name": "random", "ratio": 1.5}, "model.masker", registry())


def test_beit_block_loop_places_blocks_from_its_draws():
    from mimkit.plugin_api import beit_block_mask

    calls = []

    def uniform(a, b):  # area = the lower end, log-aspect 0 (square blocks)
        calls.append(("u", a, b))
        return a if len(calls) % 2 else 0.0

    corners = iter([1, 1, 4, 0])
    mask = beit_block_mask(6, 6, 8, uniform, lambda a, b: next(corners), min_area=4, max_area=4,
                           aspect=(0.5, 2.0))
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[1:3, 1:3] = True
    want[4:6, 0:2] = True
    assert torch.equal(mask, want)  # two 2x2 blocks at the drawn corners, budget capped at 4 each
    assert calls[0] == ("u", 4, 4)  # budget = min(8 - 0, 4)
    # a block that cannot fit ends the mask short of its target after 10 attempts
    n = []
    empty = beit_block_mask(3, 3, 5, lambda a, b: n.append(1) or a, lambda a, b: 0, min_area=16)
    assert not empty.any() and len(n) == 20  # 10 attempts x (area, aspect)
