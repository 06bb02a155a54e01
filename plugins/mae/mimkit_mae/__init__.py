"""MAE for mimkit: the decoder, presets and official checkpoint import."""
from .convert import convert_official, import_official
from .decoder import MAEDecoder
from .hf import export_hf, import_hf, load_hf

__all__ = ["MAEDecoder", "convert_official", "import_official", "export_hf", "import_hf", "load_hf"]
