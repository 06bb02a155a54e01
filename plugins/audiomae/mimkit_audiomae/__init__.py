"""mimkit-audiomae: Audio-MAE (Huang et al., NeurIPS 2022) as a mimkit plugin.

Components: encoder ``audio_vit``, decoder ``audiomae`` (local Swin / global), masker
``time_freq``, target ``fbank_patches``, visualizer ``spectrogram``, importer
``audiomae_official``; presets ``audiomae_vit_base_patch16_audioset`` and
``audiomae_tiny_spoken_digits``. Data comes from ``mimkit-audio``.
"""
from .convert import convert_official, import_official, recipe_for
from .decoder import AudioMAEDecoder, SwinBlock, shifted_window_mask, window_partition, window_reverse
from .encoder import AudioViTEncoder, audio_pos_table
from .finetune import AudioClassifier, AudioFinetune, random_masking_2d
from .masking import TimeFrequencyMasker
from .target import FbankPatchTarget

__all__ = ["convert_official", "import_official", "recipe_for", "AudioMAEDecoder", "SwinBlock", "shifted_window_mask",
           "window_partition", "window_reverse", "AudioViTEncoder", "audio_pos_table", "TimeFrequencyMasker",
           "FbankPatchTarget", "AudioClassifier", "AudioFinetune", "random_masking_2d"]
