"""MFM (Xie et al., ICLR 2023) for mimkit: frequency masking, spectrum target and loss,
pixel-shuffle decoder, ResNet encoder."""
from .decoder import LinearPixelShuffleDecoder
from .frequency import (FrequencyDistance, FrequencyMasker, FrequencyTarget, frequency_filter,
                        removed_frequencies, spectrum)
from .resnet import ResNetEncoder

__all__ = [
    "FrequencyMasker", "FrequencyTarget", "FrequencyDistance", "LinearPixelShuffleDecoder", "ResNetEncoder",
    "frequency_filter", "removed_frequencies", "spectrum",
]
