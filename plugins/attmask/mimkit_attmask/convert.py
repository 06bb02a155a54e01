"""Import bytedance/ibot and gkakogeorgiou/attmask checkpoints (official key names).

The layouts are read from the code that writes them (no released file was opened: no
downloads here). AttMask is built on iBOT's code and writes the same layout.

* **Full training checkpoint** (``main_ibot.py`` / ``main_attmask.py``, the ``save_dict`` of the
  epoch loop): ``{"student", "teacher", "optimizer", "epoch", "args", "ibot_loss",
  ["fp16_scaler"]}``. ``student``/``teacher`` are ``MultiCropWrapper(backbone, iBOTHead)``
  state dicts; the student is wrapped in DistributedDataParallel, so its keys carry
  ``module.`` (the teacher's only when the head has batch norms). ``ibot_loss`` holds the two
  centers ``center`` (1, K) and ``center2`` (1, 1, K); ``args`` the argparse Namespace.
* **Backbone-only file** (``extract_backbone_weights.py``, the released ``checkpoint_teacher.pth``
  / ``checkpoint_student.pth``): ``{"state_dict": {...}}`` with the ``backbone.`` /
  ``module.backbone.`` prefix cut; with ``--with_head true`` the ``head.*`` keys stay.
* **One network's state dict** (e.g. ``torch.save(ckpt["teacher"])``, or a ``{"teacher": ...}``
  file without the student): ``backbone.*`` (+ ``head.*``), ``module.`` optional.

Key names (``models/vision_transformer.py`` ``VisionTransformer``, ``models/head.py``
``iBOTHead``/``DINOHead``)::

    cls_token (1, 1, D), pos_embed (1, 1+N, D), patch_embed.proj.{weight,bias} (Conv2d)
    blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,bias}, norm.{weight,bias}
    masked_embed (1, D)            student only (masked_im_modeling); replaces a hidden patch
                                   embedding before the position is added (``mask_model``)
    head.mlp.{0,2,4}.{weight,bias} Linear-GELU-Linear-GELU-Linear (no norm in the head)
    head.last_layer.weight_{g,v}   weight_norm(Linear(bottleneck, K, bias=False)): g (K, 1), v (K, bottleneck)
    head.last_layer2.weight_{g,v}  the patch prototypes: a second layer when shared_head is false,
                                   else the same module registered twice (equal tensors)

mimkit's ``ibot`` model: ``encoder.vit.*`` (timm names = the official ones), ``encoder.mask_token``
(1, 1, D), ``head.mlp.*``, ``head.last_v``/``last_g`` (+ ``last_v2``/``last_g2`` unshared),
``teacher.copies.{encoder,head}.*`` and ``ibot_loss.center``/``center2``.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import torch

from mimkit.plugin_api import CheckpointError

#: Heads of the official ViT widths (``vit_tiny/small/base/large``); heads are not in the weights.
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}
ARCH_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "deit_tiny": 3, "deit_small": 6}

_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_TOP = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
        "masked_embed"}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
_HEAD_RE = re.compile(r"mlp\.(\d+)\.(weight|bias)$|mlp\.(weight|bias)$|last_layer2?\.weight_[gv]$")


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    """DDP's ``module.`` prefix off (the official loaders replace it everywhere in the key)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _network(state: Mapping[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A MultiCropWrapper state dict -> (backbone keys, head keys), prefixes cut."""
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for k, v in _strip_module(state).items():
        if k.startswith("backbone."):
            backbone[k[len("backbone."):]] = v
        elif k.startswith("head."):
            head[k[len("head."):]] = v
        else:
            raise CheckpointError(f"{where}: unexpected key {k!r} in an iBOT network state dict "
                                  "(expected backbone.* and head.*)")
    return backbone, head


def _check_backbone(bb: Mapping[str, torch.Tensor], where: str) -> int:
    """Every key one of VisionTransformer's, every block complete; returns the depth."""
    for k in bb:
        if k in _TOP:
            continue
        m = _BLOCK_RE.match(k)
        if m and m.group(2) in _BLOCK_PARTS:
            continue
        if re.match(r"blocks\.\d+\.gamma_[12]$", k):
            raise CheckpointError(f"{where}: key {k!r}: layer scale (init_values > 0) is not supported "
                                  "(mimkit's vit encoder has none; the official pretraining never sets it)")
        if k.startswith("layers."):
            raise CheckpointError(f"{where}: key {k!r}: a Swin backbone; only ViT backbones are supported")
        if k.startswith(("fc_norm.", "head.")):
            raise CheckpointError(f"{where}: key {k!r}: a fine-tuned/mean-pooling model, not an iBOT "
                                  "pretraining backbone")
        raise CheckpointError(f"{where}: unexpected key {k!r} in an iBOT ViT backbone")
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"):
        if k not in bb:
            raise CheckpointError(f"{where}: missing key {k!r} in an iBOT ViT backbone")
    depth = max((int(m.group(1)) for k in bb if (m := _BLOCK_RE.match(k))), default=-1) + 1
    for i in range(depth):
        for part in _BLOCK_PARTS:
            for t in ("weight", "bias"):
                if f"blocks.{i}.{part}.{t}" not in bb:
                    hint = " (qkv_bias false is not supported)" if part == "attn.qkv" and t == "bias" else ""
                    raise CheckpointError(f"{where}: missing key 'blocks.{i}.{part}.{t}'{hint}")
    return depth


def _check_head(head: Mapping[str, torch.Tensor], where: str) -> None:
    for k, v in head.items():
        if not _HEAD_RE.match(k):
            raise CheckpointError(f"{where}: key 'head.{k}': only the default iBOT head (Linear/GELU MLP, "
                                  "weight-normalized prototypes) is supported; norm_in_head, last_norm and "
                                  "bottleneck_dim 0 (mlp2) are not")
        m = re.match(r"mlp\.(\d+)\.", k)
        if m and int(m.group(1)) % 2:
            raise CheckpointError(f"{where}: key 'head.{k}': a layer between the head's linears "
                                  "(norm_in_head) is not supported")
    lin = sorted({int(m.group(1)) for k in head if (m := re.match(r"mlp\.(\d+)\.", k))})
    for i in range(len(lin)):  # Linear, GELU, Linear, ...: the linears at 0, 2, 4, ... with weight and bias
        for t in ("weight", "bias"):
            if f"mlp.{2 * i}.{t}" not in head:
                raise CheckpointError(f"{where}: missing key 'head.mlp.{2 * i}.{t}' (the head's linears are "
                                      f"{['mlp.%d' % j for j in lin]})")
    for k in ("last_layer.weight_g", "last_layer.weight_v"):
        if k not in head:
            raise CheckpointError(f"{where}: missing key 'head.{k}' (bottleneck_dim 0 is not supported)")
    if ("last_layer2.weight_v" in head) != ("last_layer2.weight_g" in head):
        raise CheckpointError(f"{where}: key 'head.last_layer2.weight_v' without its weight_g (or the reverse)")


def _shared(head: Mapping[str, torch.Tensor]) -> bool:
    """Whether the patch prototypes are the [CLS] ones (the same module registered twice)."""
    if "last_layer2.weight_v" not in head:
        return True
    return all(torch.equal(head[f"last_layer.weight_{t}"], head[f"last_layer2.weight_{t}"]) for t in "gv")


def _looks_like_network(state: Mapping[str, Any]) -> bool:
    keys = _strip_module(state)
    return "backbone.patch_embed.proj.weight" in keys and "backbone.pos_embed" in keys


def _looks_like_backbone(state: Mapping[str, Any]) -> bool:
    keys = _strip_module(state)
    return "patch_embed.proj.weight" in keys and "pos_embed" in keys and "cls_token" in keys


def _is_ibot(nets: Mapping[str, Any]) -> bool:
    """iBOT's marks: the patch prototypes (``head.last_layer2``) or the mask embedding."""
    return any(net is not None and ("last_layer2.weight_v" in net[1] or "masked_embed" in net[0]) for net in nets.values())


def split_official(obj: Any) -> dict[str, Any] | None:
    """An official file's content -> ``{"student": (backbone, head) | None, "teacher": ... | None,
    "loss": centers | None, "args": Namespace | None, "layout": "full" | "network" | "backbone"}``,
    or None when the file is not iBOT's (other importers then try).

    Recognized: a full checkpoint (``student`` + ``teacher``), a ``{"teacher"}`` / ``{"student"}``
    file, a backbone file ``{"state_dict": ...}`` (``extract_backbone_weights.py``), a single
    network's state dict (``backbone.*`` + ``head.*``) and a bare ViT state dict carrying iBOT's
    ``masked_embed``. Files with student/teacher networks must show an iBOT mark (``last_layer2``
    or ``masked_embed``): DINO's, with the same wrapper, are not claimed. Once recognized, a key
    that does not belong raises a CheckpointError naming it.
    """
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return None
    nets: dict[str, Any] = {"student": None, "teacher": None}
    loss = args = None
    if any(isinstance(obj.get(k), Mapping) and _looks_like_network(obj[k]) for k in nets):
        for name in nets:
            if isinstance(obj.get(name), Mapping):
                nets[name] = _network(obj[name], f"[{name!r}]")
        if not _is_ibot(nets):
            return None  # DINO's layout (DINOHead only, no mask embedding)
        loss = obj.get("ibot_loss") if isinstance(obj.get("ibot_loss"), Mapping) else None
        args = obj.get("args")
        layout = "full" if nets["student"] is not None and nets["teacher"] is not None else "network"
    else:
        wrapped = set(obj) == {"state_dict"} and isinstance(obj["state_dict"], Mapping)
        state = obj["state_dict"] if wrapped else obj  # extract_backbone_weights.py writes {"state_dict": ...}
        if not all(isinstance(k, str) for k in state):
            return None
        where = "['state_dict']" if wrapped else "state dict"
        if _looks_like_network(state):
            bb, head = _network(state, where)
            layout = "network"
        elif _looks_like_backbone(state):
            keys = _strip_module(state)
            bb = {k: v for k, v in keys.items() if not k.startswith("head.")}
            head = {k[len("head."):]: v for k, v in keys.items() if k.startswith("head.")}
            if head and "last_layer.weight_v" not in head:
                return None  # a classifier head ("head.weight"): a fine-tuned model, not a pretraining file
            layout = "backbone"
        else:
            return None
        nets["student" if "masked_embed" in bb else "teacher"] = (bb, head)
        if not wrapped and not _is_ibot(nets):
            return None  # a bare DINO/MAE/timm ViT: nothing says iBOT
    for name, net in nets.items():
        if net is not None:
            _check_backbone(net[0], f"[{name!r}] backbone")
            if net[1]:
                _check_head(net[1], f"[{name!r}] head")
    if nets["student"] is not None and nets["teacher"] is not None:
        (sb, sh), (tb, th) = nets["student"], nets["teacher"]
        for k, v in tb.items():
            if k not in sb or tuple(sb[k].shape) != tuple(v.shape):
                raise CheckpointError(f"['teacher'] backbone key {k!r}: no student key of the same shape "
                                      f"({tuple(v.shape)} vs {tuple(sb[k].shape) if k in sb else 'absent'})")
        for k, v in th.items():
            if k in sh and tuple(sh[k].shape) != tuple(v.shape):
                raise CheckpointError(f"['teacher'] head key 'head.{k}': shape {tuple(v.shape)} vs the student's "
                                      f"{tuple(sh[k].shape)}")
    return {**nets, "loss": loss, "args": args, "layout": layout}


def _encoder_keys(bb: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in bb.items():
        if k == "masked_embed":
            out[prefix + "mask_token"] = v.reshape(1, 1, -1)
        else:
            out[prefix + "vit." + k] = v
    return out


def _head_keys(head: Mapping[str, torch.Tensor], prefix: str, separate_patch_layer: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in head.items():
        if k.startswith("mlp."):
            out[prefix + ("mlp.0." + k[4:] if re.match(r"mlp\.(weight|bias)$", k) else k)] = v
        elif k.startswith("last_layer2."):
            if separate_patch_layer:
                out[prefix + "last_" + k[-1] + "2"] = v
        else:  # last_layer.weight_g / weight_v
            out[prefix + "last_" + k[-1]] = v
    return out


def convert_official(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Official iBOT/AttMask keys -> mimkit's ``ibot`` model keys (any size).

    ``obj``: a file's content (full checkpoint, backbone file, one network's state dict) or a
    bare ViT backbone state dict (taken as iBOT's since the caller says so). The
    result fills what the file holds: with a full checkpoint, student (``encoder``, ``head``),
    teacher (``teacher.copies.*``; its unused mask token from the student's ``masked_embed``) and
    the loss centers. A single network fills both the student and the teacher. Load it with
    ``strict=False``: what is absent keeps its initialization (``teacher.last_momentum``, a
    logged value, always; the heads with a backbone-only file). The model must be built with
    ``shared_head`` as the file's student (see :func:`recipe_for`).
    """
    return _convert(_parts_of(obj))


def _parts_of(obj: Any) -> dict[str, Any]:
    """split_official, also taking a bare ViT backbone (the caller says it is iBOT's)."""
    parts = split_official(obj)
    if parts is None and isinstance(obj, Mapping) and _looks_like_backbone(obj):
        parts = split_official({"state_dict": obj})
    if parts is None:
        raise CheckpointError("not an iBOT/AttMask checkpoint (no student/teacher networks, backbone file "
                              "{'state_dict': ...}, network state dict or ViT backbone found)")
    return parts


def _convert(parts: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    student, teacher = parts["student"], parts["teacher"]
    s_net, t_net = student or teacher, teacher or student
    s_bb, s_head = s_net
    t_bb, t_head = t_net
    separate = bool(s_head) and not _shared(s_head)
    out = _encoder_keys(s_bb, "encoder.")
    out.update(_head_keys(s_head, "head.", separate))
    out.update(_encoder_keys(t_bb, "teacher.copies.encoder."))
    t_head = t_head or s_head
    out.update(_head_keys(t_head, "teacher.copies.head.", False))
    if separate:  # the teacher copy of the student's patch layer: unused by the shared teacher head
        for t in "gv":
            out[f"teacher.copies.head.last_{t}2"] = t_head.get(f"last_layer2.weight_{t}", t_head[f"last_layer.weight_{t}"])
    if "masked_embed" in s_bb and "teacher.copies.encoder.mask_token" not in out:
        out["teacher.copies.encoder.mask_token"] = s_bb["masked_embed"].reshape(1, 1, -1)  # unused by the teacher
    if "encoder.mask_token" not in out and "masked_embed" in t_bb:
        out["encoder.mask_token"] = t_bb["masked_embed"].reshape(1, 1, -1)
    loss = parts.get("loss")
    if loss:
        for k in ("center", "center2"):
            if k in loss:
                out["ibot_loss." + k] = loss[k]
    return out


def _arg(args: Any, name: str, default: Any) -> Any:
    return getattr(args, name, default) if args is not None else default


def recipe_for(parts_or_obj: Any) -> dict[str, Any]:
    """The ``ibot`` model recipe a file describes: sizes from the weights (width, depth, patch,
    channels, image size, MLP ratio, head widths and layers, prototypes, shared patch layer);
    heads from the ``args`` Namespace of a full checkpoint (``--arch``), else from the width
    (the official ViT sizes); loss and masking settings from ``args`` when present."""
    parts = parts_or_obj if isinstance(parts_or_obj, Mapping) and "layout" in parts_or_obj else _parts_of(parts_or_obj)
    args = parts.get("args")
    net = parts["student"] or parts["teacher"]
    bb, head = net
    w = bb["patch_embed.proj.weight"]  # (D, C, p, p)
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n = bb["pos_embed"].shape[1] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise CheckpointError(f"key 'pos_embed': {n} patch positions are not a square grid")
    depth = _check_backbone(bb, "backbone")
    heads = ARCH_HEADS.get(str(_arg(args, "arch", "")), HEADS.get(dim, max(1, dim // 64)))
    encoder = {"name": "vit", "model": "vit_small_patch16_224", "img_size": side * patch, "patch_size": patch,
               "in_chans": chans, "embed_dim": dim, "depth": depth, "num_heads": heads,
               "mlp_ratio": bb["blocks.0.mlp.fc1.weight"].shape[0] / dim if depth else 4.0, "norm_eps": 1e-6,
               "pos_embed": "learned", "mode": "with_mask_token", "init": "timm",
               "drop_path": float(_arg(args, "drop_path", 0.1))}
    model: dict[str, Any] = {"name": "ibot", "encoder": encoder}
    th = (parts["teacher"] or net)[1]
    if head or th:
        h = head or th
        lin = sorted({int(m.group(1)) for k in h if (m := re.match(r"mlp\.(\d+)\.weight$", k))})
        v = h["last_layer.weight_v"]  # (K, bottleneck)
        model.update(out_dim=v.shape[0], bottleneck_dim=v.shape[1], head_layers=max(1, len(lin)),
                     hidden_dim=h[f"mlp.{lin[0]}.weight"].shape[0] if len(lin) > 1 else 2048,
                     shared_head=not (bool(head) and parts["student"] is not None and not _shared(head)))
    elif args is not None:
        model.update(out_dim=int(_arg(args, "out_dim", 8192)))
    if args is not None:
        model.update(norm_last_layer=bool(_arg(args, "norm_last_layer", True)),
                     freeze_last_layer_epochs=float(_arg(args, "freeze_last_layer", 1)),
                     teacher_temp=float(_arg(args, "teacher_temp", 0.04)),
                     warmup_teacher_temp=float(_arg(args, "warmup_teacher_temp", 0.04)),
                     patch_teacher_temp=float(_arg(args, "teacher_patch_temp", 0.07)),
                     warmup_patch_teacher_temp=float(_arg(args, "warmup_teacher_patch_temp", 0.04)),
                     warmup_teacher_temp_epochs=float(_arg(args, "warmup_teacher_temp_epochs", 30)),
                     lambda1=float(_arg(args, "lambda1", 1.0)), lambda2=float(_arg(args, "lambda2", 1.0)))
        model["teacher"] = {"name": "ema", "copy": ["encoder", "head"], "momentum": float(_arg(args, "momentum_teacher", 0.996)),
                            "momentum_end": 1.0, "schedule": "cosine", "every": "step"}
        shape = str(_arg(args, "pred_shape", ""))
        if shape.startswith("attmask_") and shape[8:] in ("high", "low", "hint"):
            ratio = _arg(args, "pred_ratio", 0.3)
            var = _arg(args, "pred_ratio_var", 0.0)
            ratio = ratio[0] if isinstance(ratio, (list, tuple)) and len(ratio) == 1 else ratio
            var = var[0] if isinstance(var, (list, tuple)) and len(var) == 1 else var
            masker: dict[str, Any] = {"name": "attention_guided", "mode": shape[8:],
                                      "masking_prob": float(_arg(args, "masking_prob", 0.5)),
                                      "show_max": float(_arg(args, "show_max", 0.1))}
            if isinstance(ratio, (int, float)) and isinstance(var, (int, float)):
                masker["ratio_range"] = [round(float(ratio - var), 6), round(float(ratio + var), 6)]
            model["masker"] = masker
        elif shape in IBOT_SHAPES:  # iBOT's own masks (loader.py ImageFolderMask), same names
            ratio, var = _arg(args, "pred_ratio", 0.3), _arg(args, "pred_ratio_var", 0.0)
            masker = {"name": f"ibot_{shape}", "pred_ratio": _ratios(ratio), "pred_ratio_var": _ratios(var),
                      "pred_start_epoch": int(_arg(args, "pred_start_epoch", 0))}
            if shape == "block":  # main_ibot.py passes (0.3, 1/0.3); no argument for it
                masker["pred_aspect_ratio"] = [float(a) for a in _arg(args, "pred_aspect_ratio", (0.3, 1 / 0.3))]
            model["masker"] = masker
            model["teacher"]["attention"] = False  # these masks do not read the teacher's attention
    return {"model": model}


#: ``--pred_shape`` values with a mimkit masker of their own (``ibot_block`` / ``ibot_rand``).
IBOT_SHAPES = ("block", "rand")


def _ratios(value: Any) -> float | list[float]:
    """``--pred_ratio`` / ``--pred_ratio_var`` (``nargs='+'``: a list, or the float default) as
    the masker takes them; a one-element list is its value, as ``ImageFolderMask`` reads it."""
    if isinstance(value, (list, tuple)):
        return float(value[0]) if len(value) == 1 else [float(v) for v in value]
    return float(value)


def import_official(obj: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool] | None:
    """The ``mimkit_importers`` entry: an iBOT/AttMask file, else None (other importers try)."""
    try:
        parts = split_official(obj)
        if parts is None:
            return None
        recipe = recipe_for(parts)
        state = _convert(parts)
    except CheckpointError as exc:
        raise CheckpointError(f"iBOT/AttMask checkpoint not importable: {exc}") from None
    missing = [what for what, key in (("the projection heads", "head.last_v"), ("the mask token", "encoder.mask_token"),
                                      ("the loss centers", "ibot_loss.center")) if key not in state]
    if parts["layout"] != "full" or missing:
        kind = {"full": "full", "network": "single-network", "backbone": "backbone-only"}[parts["layout"]]
        same = "" if parts["layout"] == "full" else "student and teacher get the same weights; "
        warnings.warn(f"{kind} iBOT/AttMask checkpoint: {same}not in the file, so left at their initialization: "
                      + ", ".join(missing), stacklevel=2)
    shape = _arg(parts.get("args"), "pred_shape", None)
    if "masker" not in recipe["model"] and parts.get("args") is not None:
        warnings.warn(f"--pred_shape {shape!r} has no mimkit masker (known: block, rand, attmask_high/low/hint): "
                      "the imported model masks with AttMask's attention_guided masker if trained on "
                      "(features and heads are unaffected)", stacklevel=2)
    return recipe, state, False
