"""SupMAE for mimkit: a supervised classification branch on MAE's visible tokens."""
from .head import VisibleTokenClassification

__all__ = ["VisibleTokenClassification"]
