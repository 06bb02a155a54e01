"""The checker masker hides a checkerboard: half the tokens, no two hidden neighbours."""
import torch

from mimkit.plugin_api import BuildEnv
from mimkit_checker import CheckerMasker


class _Enc:
    grid = (1, 4, 4)
    num_patches = 16


def test_checkerboard() -> None:
    m = CheckerMasker(CheckerMasker.Config(), BuildEnv(registry=None, encoder=_Enc()))
    mask = m({}, torch.tensor([[0.0], [1.0]]), None)
    assert mask.hidden.sum(1).tolist() == [8, 8]
    assert torch.equal(mask.hidden[0], ~mask.hidden[1])  # the two phases are complementary
    grid = mask.hidden[0].view(4, 4)
    assert not (grid[:, 1:] & grid[:, :-1]).any() and not (grid[1:] & grid[:-1]).any()
