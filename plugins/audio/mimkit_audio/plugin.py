"""mimkit-audio's hook implementations: audio data sources and the feature k-NN protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl

from .data import AudioFolder, SpokenDigits
from .knn import FeatureKNN

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_datasets():
    return {"audio_folder": AudioFolder, "spoken_digits": SpokenDigits}


@hookimpl
def mimkit_protocols():
    return {"feature_knn": FeatureKNN}
