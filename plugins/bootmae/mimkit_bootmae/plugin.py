"""mimkit-bootmae's hook implementations: the ``bootmae`` model, the ``target_aware`` decoder,
the ``bootmae_block`` masker and the BootMAE presets."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl, package_presets

from .decoder import TargetAwareDecoder
from .masking import BootMAEBlockMasker
from .model import BootMAE

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_models():
    return {"bootmae": BootMAE}


@hookimpl
def mimkit_decoders():
    return {"target_aware": TargetAwareDecoder}


@hookimpl
def mimkit_maskers():
    return {"bootmae_block": BootMAEBlockMasker}


@hookimpl
def mimkit_presets():
    return package_presets("mimkit_bootmae")
