"""The hook specifications: the contract between the mimkit core and its plugins.

A plugin is a module of ``@hookimpl`` functions, published through the entry-point group
``mimkit`` and carrying ``MIMKIT_API = <int>``, the hook-API version it was written for
(:data:`HOOK_API_VERSION`). Each registration hook below is called once, when the registry
is first built, with no arguments, and returns a mapping ``{component name: class}``
(``mimkit_presets``: ``{preset name: recipe mapping}``). All results are collected; a name
registered by two plugins is an error naming both.

A component class has a nested ``Config`` attrs class (validated before anything is built)
and is constructed as ``cls(config, env)`` where ``env`` is a :class:`mimkit.components.BuildEnv`
holding what was built before it (the encoder, the target's width, ...). The return types name
the contract of each kind: the bases :class:`~mimkit.components.Masker`,
:class:`~mimkit.components.Loss`, :class:`~mimkit.model.MethodModel` and the structural
protocols of :mod:`mimkit.components` (``Encoder``, ``Decoder``, ``Target``, ``Teacher``,
``Visualizer``, ``Dataset``, ``EvalProtocol``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import pluggy

from .components import (
    Dataset, Decoder, Encoder, EvalProtocol, Exporter, Loss, Masker, Target, Teacher, Visualizer,
)
from .model import MethodModel

PROJECT = "mimkit"
#: Bumped when a hook's meaning changes; a plugin declaring another version is refused.
HOOK_API_VERSION = 2
#: What changed at each version, quoted when a plugin of an older version is refused.
API_CHANGES = {
    2: "the preset hook mimkit_methods was renamed mimkit_presets; import from mimkit.plugin_api",
}

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mimkit_maskers() -> Mapping[str, type[Masker]]:
    """Register maskers: modules that decide which tokens (or frequencies) are hidden.

    Protocol: ``sample_noise(generator) -> Tensor`` draws one sample's randomness in the data
    loader (from a generator seeded by (seed, epoch, sample index), so masks do not depend on
    the number of processes); ``forward(batch, noise, ctx) -> Mask`` runs vectorized on the
    device, with ``noise`` (B, ...) the stacked per-sample draws.
    """


@hookspec
def mimkit_targets() -> Mapping[str, type[Target]]:
    """Register targets: modules computing what the decoder must predict.

    Protocol: attribute ``dim`` (values per token) and ``forward(batch, mask, ctx) -> Tensor``
    giving (B, N, dim) for every token; the model gathers the hidden ones when the decoder
    predicts those only. Targets never receive gradients.
    """


@hookspec
def mimkit_encoders() -> Mapping[str, type[Encoder]]:
    """Register encoders.

    Protocol: attributes ``embed_dim``, ``grid`` (t, h, w), ``patch`` (pt, ph, pw),
    ``in_chans``, ``num_prefix_tokens``; ``embed(x, mask) -> tokens`` (only the kept patches
    for a visible-only encoder), ``encode(tokens, mask) -> latent`` (B, prefix + N_seen, D),
    and ``forward_features(x) -> (B, prefix + N, D)`` on the whole input for evaluation.
    """


@hookspec
def mimkit_decoders() -> Mapping[str, type[Decoder]]:
    """Register decoders.

    Protocol: attribute ``predict`` ("all" or "masked"); ``forward(latent, mask, ctx) -> pred``
    of shape (B, N, target dim) or (B, N_hidden, target dim) in ``mask.ids_hidden`` order.
    """


@hookspec
def mimkit_losses() -> Mapping[str, type[Loss]]:
    """Register losses.

    Protocol: ``forward(outputs, batch, ctx) -> Tensor`` (a scalar). A loss reads the outputs
    it needs by name (``outputs.get(name)``), so recipes wire hybrids without code. A loss may
    own parameters (a projection head): they train with the model.
    """


@hookspec
def mimkit_teachers() -> Mapping[str, type[Teacher]]:
    """Register teachers: gradient-free models whose outputs feed maskers, targets and losses.

    Protocol: ``forward(batch, ctx) -> dict`` stored in ``ctx.teacher`` before masking;
    ``on_step_end(model, step)`` and ``on_epoch_end(model, epoch)`` update them (EMA).
    """


@hookspec
def mimkit_models() -> Mapping[str, type[MethodModel]]:
    """Register whole-method models for flows the composed masked model does not cover
    (iGPT, FLIP, TTT, CMAE). Protocol: ``cls(config, env)``; ``forward(batch, ctx) -> Outputs``
    with ``loss`` and ``losses`` set. Optional: ``set_schedule(total_steps, steps_per_epoch)``,
    ``on_step_end(step)``, ``on_epoch_end(epoch)`` (called by the trainer when defined),
    ``masker.sample_noise`` (per-sample mask randomness drawn in the loader), ``input_key``,
    ``encoder`` and ``features(x)`` for evaluation, ``eval_encoder`` (the encoder the
    evaluation protocols read instead of ``encoder``: iBOT's teacher), ``param_groups(
    weight_decay)`` (the optimizer groups, instead of the generic decay rule) and
    ``forward(..., mask=)`` (an explicit (B, N) bool map, True = hidden)."""


@hookspec
def mimkit_presets() -> Mapping[str, Mapping[str, Any]]:
    """Register presets: named recipe mappings a recipe can start from (``method: NAME``)."""


@hookspec
def mimkit_datasets() -> Mapping[str, type[Dataset]]:
    """Register data sources. Protocol: ``cls(config, split=..., train=...)`` is a map-style
    dataset whose items are dicts ("image" | "video" | "audio", optional "label")."""


@hookspec
def mimkit_visualizers() -> Mapping[str, type[Visualizer]]:
    """Register pictures of a method's outputs (reconstructions, completions, spectrograms).

    Protocol: ``cls(config=None)`` (an attrs ``Config`` with defaults), then
    ``vis(model, batch, path, *, mean, std, seed, title) -> Path`` writes a PNG of the model's
    outputs on ``batch`` (held-out items; ``mean``/``std`` undo the data normalization) and
    returns its path. A model names its visualizer with a ``visualizer`` attribute, on itself
    or on its target (:func:`mimkit.viz.visualizer_name`); the trainer draws it at the end of a
    run and ``mim visualize`` on demand.
    """


@hookspec
def mimkit_protocols() -> Mapping[str, type[EvalProtocol]]:
    """Register evaluation and analysis protocols, run as ``mim eval NAME SOURCE...`` (also
    ``mim analyze NAME SOURCE...``): zero-shot classification, corruption robustness,
    test-time training, occlusion invariance, ...

    Protocol: a class with an attrs ``Config`` whose fields become the command's flags
    (``field_name`` -> ``--field-name``, defaults and ``one_of`` choices shown in ``--help``);
    ``cls(config)(sources) -> dict`` receives the positional sources (run folders, checkpoints,
    files; usually one) and returns a JSON-serializable record. The record's ``"summary"``
    entry, when present, is the one line the CLI prints; the CLI writes the record to ``--out``
    (default ``SOURCE/eval/NAME.json`` for a run folder, else ``eval/NAME.json``).
    """


@hookspec
def mimkit_importers() -> Mapping[str, Callable[[Mapping[str, Any]], Any]]:
    """Register checkpoint importers for official releases.

    Each callable receives a loaded state mapping and returns ``(recipe, state_dict)`` (or
    ``(recipe, state_dict, strict)``) in mimkit's layout, or ``None`` when the file is not one it
    knows. Used by :func:`mimkit.load`: for a file, the mapping is the file's content; for a
    Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), it is ``{"hf_config": config, "state": weights}``.
    """


@hookspec
def mimkit_pickled() -> Mapping[str, Callable[..., Any]]:
    """Register stand-ins for the classes that official checkpoint files pickle beside their
    tensors (a yacs config, a logging buffer): ``{"module.QualName": stand_in}``. ``mimkit.load``
    reads files with ``torch.load(weights_only=True)`` and lets only these names through, rebuilt
    by the stand-in (usually a plain mapping or attribute bag): nothing from the file runs."""


@hookspec
def mimkit_exporters() -> Mapping[str, Exporter]:
    """Register export formats beyond the core's ``timm`` and ``full`` (``mim export --format
    NAME``, :func:`mimkit.export.export`): ``{exporter name: Exporter(format=..., check=...,
    write=...)}``. Exporters of one format are tried in name order; the first whose ``check``
    accepts the model writes its folder."""

