"""mimkit-audio: the audio toolkit shared by mimkit's audio methods.

A Kaldi-compatible log-mel filterbank in torch (:func:`fbank`), the ``audio_folder`` and
``spoken_digits`` data sources, and the ``feature_knn`` protocol (k-NN on ``model.features``
for any modality).
"""
from .data import AudioFeatures, AudioFolder, SpokenDigits, read_audio, resample
from .fbank import AUDIOSET_MEAN, AUDIOSET_STD, fbank, mel_banks, mel_scale, pad_or_cut, window_function
from .knn import FeatureKNN, features_of, knn_scores

__all__ = ["fbank", "mel_banks", "mel_scale", "pad_or_cut", "window_function", "AUDIOSET_MEAN", "AUDIOSET_STD",
           "AudioFeatures", "AudioFolder", "SpokenDigits", "read_audio", "resample", "FeatureKNN", "features_of",
           "knn_scores"]
