"""MAE for mimkit: the decoder, presets and official checkpoint import."""
from .convert import convert_official, import_official
from .decoder import MAEDecoder

__all__ = ["MAEDecoder", "convert_official", "import_official"]
