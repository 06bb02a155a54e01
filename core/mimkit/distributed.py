"""Several processes: DDP or FSDP2 (``fully_shard``) through Accelerate, and sharded checkpoints.

``train.distributed.strategy`` picks the strategy: ``ddp`` (a full replica per process, gradients
all-reduced), ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded over the
processes, each repeated block its own unit), or ``auto`` (what ``accelerate config`` /
``accelerate launch --use_fsdp`` said, else DDP). The model's code does not change: FSDP2 keeps
parameter names, and the units are the module classes repeated in a ``ModuleList``/``Sequential``
(the transformer blocks of the encoder and the decoder) unless ``wrap`` names them.

Accelerate 1.15 turns FSDP on only for accelerators (CUDA, XPU, ...): on CPUs (gloo) it always
prepares DDP. :func:`promote_cpu_fsdp` hands Accelerate's own FSDP2 preparation the CPU
processes, which is how the tests run FSDP with two CPU processes.

An FSDP checkpoint stores the model and the optimizer sharded (``sharded/``, written by every
process through ``torch.distributed.checkpoint``, one file per process); resuming reads it back
into the shards (any number of processes), and :func:`read_sharded_model` consolidates the model
in one process for :func:`mimkit.load`, ``mim export`` and ``mim eval``. The checkpoint stays
atomic: the processes write into one staging folder that the main process renames when every
shard is there (the folder must be on a file system every machine sees, as for any DCP checkpoint).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import attrs
import torch

from .errors import CheckpointError, ConfigError
from .schema import one_of

SHARDED = "sharded"  # the DCP folder inside an FSDP checkpoint


@attrs.define(kw_only=True)
class DistributedConfig:
    """How several processes share the work (one process ignores it)."""

    # auto: FSDP when `accelerate config`/`accelerate launch --use_fsdp` asked for it, else DDP
    strategy: str = attrs.field(default="auto", validator=one_of("auto", "ddp", "fsdp"))
    # FSDP2: free the gathered parameters of a unit after its forward (ZeRO-3); false keeps them until
    # the backward (ZeRO-2-like: more memory, one all-gather less per step)
    reshard_after_forward: bool = True
    # FSDP2 units: module class names sharded on their own; None = every class repeated in a ModuleList or
    # Sequential (the transformer blocks). The rest of the model is the root unit.
    wrap: list[str] | None = None


def accelerate_asks_fsdp() -> bool:
    """Whether the launcher's configuration (``accelerate config``, ``--use_fsdp``) asks for FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def resolve_strategy(cfg: DistributedConfig, world: int) -> tuple[str, str]:
    """(strategy, where it came from) for a run of ``world`` processes: ``none`` for one process."""
    if world <= 1:
        return "none", "one process"
    if cfg.strategy != "auto":
        return cfg.strategy, "recipe (train.distributed.strategy)"
    if accelerate_asks_fsdp():
        return "fsdp", "accelerate config (ACCELERATE_USE_FSDP)"
    return "ddp", "default"


def fsdp_plugin(cfg: DistributedConfig):
    """Accelerate's FSDP2 plugin for the recipe. The recipe's options win; the wrapped classes come
    from ``accelerate config`` (``FSDP_TRANSFORMER_CLS_TO_WRAP``) when the recipe leaves ``wrap`` unset,
    else the model's repeated blocks (:func:`prepare_fsdp`)."""
    from accelerate import FullyShardedDataParallelPlugin

    version = int(os.environ.get("FSDP_VERSION", "2"))
    if version != 2:
        raise ConfigError(f"FSDP version {version} requested by the accelerate config (FSDP_VERSION); mimkit "
                          "supports FSDP2 (fully_shard) only: set fsdp_version: 2 in `accelerate config`")
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=cfg.reshard_after_forward, auto_wrap_policy="transformer_based_wrap",
        state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False)


def block_classes(model: torch.nn.Module) -> list[str]:
    """The class names repeated in a ``ModuleList``/``Sequential`` of the model (its blocks)."""
    names = set()
    for m in model.modules():
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(m) > 1:
            kinds = {type(c) for c in m}
            if len(kinds) == 1 and any(True for _ in m[0].parameters()):
                names.add(next(iter(kinds)).__name__)
    return sorted(names)


def prepare_fsdp(accelerator: Any, plugin: Any, cfg: DistributedConfig, model: torch.nn.Module,
                 mixed_precision: str) -> list[str]:
    """Point the plugin at the model's units; on CPUs make Accelerate prepare FSDP2 (see the module
    docstring). Returns the wrapped class names."""
    from accelerate.utils import DistributedType

    names = list(cfg.wrap) if cfg.wrap is not None else (plugin.transformer_cls_names_to_wrap or block_classes(model))
    present = {type(m).__name__ for m in model.modules()}
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(f"train.distributed.wrap names {missing}, which are not module classes of this model; "
                          f"its repeated blocks are {block_classes(model)}")
    plugin.transformer_cls_names_to_wrap = names
    state = accelerator.state
    if state.distributed_type != DistributedType.FSDP:  # CPU processes (gloo): Accelerate chose DDP
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise ConfigError(f"train.distributed.strategy=fsdp: Accelerate set up {state.distributed_type.value}, "
                              "which mimkit cannot turn into FSDP; launch with `accelerate launch --use_fsdp "
                              "--fsdp_version 2` (or `accelerate config`)")
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        from accelerate.state import PartialState

        # both singletons: AcceleratorState copies PartialState's fields whenever it is re-created
        PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    return names


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint)


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards of the model and the optimizer into ``folder`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read ``folder`` back into this process's shards (collective; any number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no .metadata: not a complete sharded checkpoint")
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    try:
        dcp.load(state, storage_reader=SafeReader(str(folder)))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (DCP raises CheckpointException wrapping each rank's error)
        raise CheckpointError(f"cannot read the sharded checkpoint {folder}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_sharded_model(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model of a sharded checkpoint, consolidated in this process (no process group
    needed): plain CPU tensors, as ``model.safetensors`` would hold."""
    model = read_sharded(folder, "model")
    return {k: v.contiguous() for k, v in model.items() if torch.is_tensor(v)}


def read_sharded(folder: Path, part: str = "model") -> dict[str, Any]:
    """One part (``model`` or ``optim``) of a sharded checkpoint, consolidated in this process."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: no .metadata: not a complete sharded checkpoint")
    reader = SafeReader(str(folder))
    keys = {k for k in reader.read_metadata().state_dict_metadata if k.startswith(part + ".")}
    state: dict[str, Any] = {}
    try:
        _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read the sharded checkpoint {folder}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
    found = state.get(part)
    if not isinstance(found, dict) or not found:
        raise CheckpointError(f"{folder}: the sharded checkpoint holds no {part} state")
    return found


# DCP's .metadata is a pickle of plain records: read it with only those classes allowed, so that a
# checkpoint cannot run code when it is loaded (the rest of the checkpoint is safetensors / weights_only).
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", None),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", None),
    ("torch.distributed.checkpoint.storage", None),
    ("torch", "Size"), ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"), ("torch", "float64"),
    ("torch", "int64"), ("torch", "int32"), ("torch", "int8"), ("torch", "uint8"), ("torch", "bool"),
    ("torch", "strided"), ("torch", "contiguous_format"), ("torch", "preserve_format"),
    ("torch", "channels_last"), ("torch", "channels_last_3d"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("enum", "Enum"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module, None) in _ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to read a sharded checkpoint's .metadata: it names {module}.{name}, "
                              "which a checkpoint's metadata never holds (it may contain code)")


def _safe_metadata(data: bytes) -> Any:
    return _MetadataUnpickler(io.BytesIO(data)).load()


try:
    from torch.distributed.checkpoint import FileSystemReader as _FileSystemReader
except ImportError:  # torch built without distributed
    _FileSystemReader = object  # type: ignore[assignment,misc]


class SafeReader(_FileSystemReader):  # type: ignore[misc,valid-type]
    """``FileSystemReader`` whose metadata is read with an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _safe_metadata(f.read())
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
