"""MFM (Xie et al., ICLR 2023) for mimkit: frequency masking, spectrum target and loss,
pixel-shuffle decoder, ResNet encoder."""
from .convert import convert_official, import_official, recipe_for
from .decoder import LinearPixelShuffleDecoder
from .frequency import (FrequencyDistance, FrequencyMasker, FrequencyTarget, frequency_filter,
                        removed_frequencies, spectrum)
from .resnet import ResNetEncoder

__all__ = [
    "FrequencyMasker", "FrequencyTarget", "FrequencyDistance", "LinearPixelShuffleDecoder", "ResNetEncoder",
    "convert_official", "recipe_for", "import_official", "frequency_filter", "removed_frequencies", "spectrum",
]
