"""mimkit-corruptions' hook implementations: the corrupted datasets and the ``corruption`` protocol."""
from __future__ import annotations

from mimkit.plugin_api import hookimpl

from .datasets import Corrupted, FashionMNISTC
from .protocol import CorruptionProtocol

MIMKIT_API = 2  # the hook API this plugin was written for (a literal, checked at load)


@hookimpl
def mimkit_datasets():
    return {"fashion_mnist_c": FashionMNISTC, "corrupted": Corrupted}


@hookimpl
def mimkit_protocols():
    return {"corruption": CorruptionProtocol}
