"""mimkit-checker: a checkerboard masker, the smallest useful third-party mimkit plugin."""
from .masking import CheckerMasker

__all__ = ["CheckerMasker"]
