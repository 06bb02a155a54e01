"""SupMAE for mimkit: a supervised classification branch on MAE's visible tokens."""
from .convert import convert_official, import_official
from .head import VisibleTokenClassification

__all__ = ["VisibleTokenClassification", "convert_official", "import_official"]
