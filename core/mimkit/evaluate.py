"""Kept for existing imports: the evaluation protocols now live in :mod:`mimkit.evaluation`."""
from __future__ import annotations

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
