"""Official bytedance/ibot and gkakogeorgiou/attmask checkpoints load and give the official outputs.

Random weights are saved in the layouts the official code writes (``main_ibot.py`` save_dict with a
DDP-wrapped student, ``extract_backbone_weights.py`` backbone files), under the official key names.
The reference below is written from the official formulas (``VisionTransformer.prepare_tokens`` /
``mask_model`` / ``Block``, ``iBOTHead.forward`` with weight-normalized prototypes, ``iBOTLoss``) in
plain torch, reading those keys directly; mimkit's model comes from ``mimkit.load`` and must agree
within 1e-5.
"""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.errors import CheckpointError
from mimkit.testing import reference_vit_block
from mimkit.types import Context
from mimkit_attmask import convert_official
from mimkit_attmask.convert import import_official

D, DEPTH, HEADS = 192, 2, 3  # vit_tiny's width and heads
P, IMG, C = 8, 32, 3
N, SIDE = (IMG // P) ** 2, IMG // P
HID, BOT, K = 64, 32, 50  # head: hidden, bottleneck, prototypes
TOL = 1e-5


def rnd(g: torch.Generator):
    return lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731


def official_backbone(seed: int, masked_embed: bool) -> dict[str, torch.Tensor]:
    """VisionTransformer(...).state_dict() key names, random values."""
    r = rnd(torch.Generator().manual_seed(seed))
    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, N + 1, D), "patch_embed.proj.weight": r(D, C, P, P),
          "patch_embed.proj.bias": r(D), "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(DEPTH):
        pre = f"blocks.{i}."
        sd.update({pre + "norm1.weight": 1 + r(D), pre + "norm1.bias": r(D),
                   pre + "attn.qkv.weight": r(3 * D, D), pre + "attn.qkv.bias": r(3 * D),
                   pre + "attn.proj.weight": r(D, D), pre + "attn.proj.bias": r(D),
                   pre + "norm2.weight": 1 + r(D), pre + "norm2.bias": r(D),
                   pre + "mlp.fc1.weight": r(4 * D, D), pre + "mlp.fc1.bias": r(4 * D),
                   pre + "mlp.fc2.weight": r(D, 4 * D), pre + "mlp.fc2.bias": r(D)})
    if masked_embed:
        sd["masked_embed"] = r(1, D) * 20
    return sd


def official_head(seed: int, shared: bool) -> dict[str, torch.Tensor]:
    """iBOTHead(...).state_dict(): with shared_head the prototype module is registered twice."""
    r = rnd(torch.Generator().manual_seed(seed))
    sd = {"mlp.0.weight": r(HID, D) * 10, "mlp.0.bias": r(HID), "mlp.2.weight": r(HID, HID) * 10, "mlp.2.bias": r(HID),
          "mlp.4.weight": r(BOT, HID) * 10, "mlp.4.bias": r(BOT),
          "last_layer.weight_g": 5 + r(K, 1) * 40, "last_layer.weight_v": r(K, BOT)}
    if shared:
        sd["last_layer2.weight_g"], sd["last_layer2.weight_v"] = sd["last_layer.weight_g"], sd["last_layer.weight_v"]
    else:
        sd["last_layer2.weight_g"], sd["last_layer2.weight_v"] = 5 + r(K, 1) * 40, r(K, BOT)
    return sd


def network(backbone: dict, head: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """MultiCropWrapper(backbone, head).state_dict(), DDP's ``module.`` in front when given."""
    return {**{f"{prefix}backbone.{k}": v for k, v in backbone.items()}, **{f"{prefix}head.{k}": v for k, v in head.items()}}


def full_checkpoint(shared_student: bool = True, seed: int = 0, **args_edit) -> dict:
    """main_ibot.py's save_dict: DDP student (module.), plain teacher (shared_head_teacher);
    ``args_edit`` changes / adds / (None) removes fields of its ``args``."""
    g = torch.Generator().manual_seed(seed + 99)
    args = argparse.Namespace(arch="vit_tiny", patch_size=P, out_dim=K, shared_head=shared_student, norm_last_layer=False,
                              teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_patch_temp=0.07,
                              warmup_teacher_patch_temp=0.04, warmup_teacher_temp_epochs=30, lambda1=1.0, lambda2=1.0,
                              momentum_teacher=0.996, freeze_last_layer=1, drop_path=0.1, pred_shape="attmask_hint",
                              pred_ratio=[0.3], pred_ratio_var=[0.2], masking_prob=0.5, show_max=0.1)
    for k, v in args_edit.items():
        if v is None:
            delattr(args, k)
        else:
            setattr(args, k, v)
    return {"student": network(official_backbone(seed, True), official_head(seed + 1, shared_student), "module."),
            "teacher": network(official_backbone(seed + 2, False), official_head(seed + 3, True)),
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "args": args,
            "ibot_loss": {"center": torch.randn(1, K, generator=g), "center2": torch.randn(1, 1, K, generator=g)}}


# -- the reference: official formulas, official key names ---------------------------------------

def ref_vit(sd: dict, x: torch.Tensor, mask: torch.Tensor | None = None, pre: str = "") -> torch.Tensor:
    """VisionTransformer.forward(x, return_all_tokens=True, mask=mask): (B, 1+N, D)."""
    t = F.conv2d(x, sd[pre + "patch_embed.proj.weight"], sd[pre + "patch_embed.proj.bias"], stride=P)  # (B, D, h, w)
    if mask is not None:  # mask_model: hidden patch embeddings replaced, before the positions
        t = t.permute(0, 2, 3, 1).clone()
        t[mask.view(-1, SIDE, SIDE)] = sd[pre + "masked_embed"]
        t = t.permute(0, 3, 1, 2)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd[pre + "cls_token"].expand(t.shape[0], -1, -1), t], 1) + sd[pre + "pos_embed"]
    d = t.shape[-1]
    for i in range(DEPTH):
        t = reference_vit_block(t, sd, f"{pre}blocks.{i}.", HEADS)
    return F.layer_norm(t, (d,), sd[pre + "norm.weight"], sd[pre + "norm.bias"], eps=1e-6)


def ref_head(sd: dict, x: torch.Tensor, pre: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """iBOTHead.forward on (B, 1+N, D): ([CLS] logits (B, K), patch logits (B, N, K))."""
    z = F.linear(F.gelu(F.linear(F.gelu(F.linear(x, sd[pre + "mlp.0.weight"], sd[pre + "mlp.0.bias"])),
                                 sd[pre + "mlp.2.weight"], sd[pre + "mlp.2.bias"])), sd[pre + "mlp.4.weight"], sd[pre + "mlp.4.bias"])
    z = F.normalize(z, dim=-1, p=2)

    def wn(name):  # torch weight_norm(dim=0): W = g * v / ||v|| over each output row
        v = sd[pre + name + ".weight_v"]
        return sd[pre + name + ".weight_g"] * v / v.norm(dim=1, keepdim=True)

    return z[:, 0] @ wn("last_layer").t(), z[:, 1:] @ wn("last_layer2").t()


def ref_loss(s_cls, s_patch, t_cls, t_patch, masks, center, center2, temp, temp2, ng=2, student_temp=0.1):
    """iBOTLoss.forward (no local crops): (cls term, patch term)."""
    s_cls_c, s_patch_c = (s_cls / student_temp).chunk(ng), (s_patch / student_temp).chunk(ng)
    t_cls_c = F.softmax((t_cls - center) / temp, dim=-1).chunk(ng)
    t_patch_c = F.softmax((t_patch - center2) / temp2, dim=-1).chunk(ng)
    l1 = l2 = 0.0
    n1 = n2 = 0
    for q in range(ng):
        for v in range(ng):
            if v == q:
                ce = torch.sum(-t_patch_c[q] * F.log_softmax(s_patch_c[v], dim=-1), dim=-1)
                m = masks[v].flatten(-2, -1).float()
                l2 = l2 + (torch.sum(ce * m, dim=-1) / m.sum(-1).clamp(min=1.0)).mean()
                n2 += 1
            else:
                l1 = l1 + torch.sum(-t_cls_c[q] * F.log_softmax(s_cls_c[v], dim=-1), dim=-1).mean()
                n1 += 1
    return l1 / n1, l2 / n2


def images(b: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(b, C, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False], ids=["shared_head", "separate_patch_prototypes"])
def test_full_checkpoint_student_teacher_and_heads(tmp_path, shared: bool) -> None:
    ck = full_checkpoint(shared_student=shared)
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    model = mimkit.load(path)
    rec = model.recipe.model
    assert (rec["encoder"]["num_heads"], rec["encoder"]["depth"], rec["out_dim"], rec["shared_head"]) == (HEADS, DEPTH, K, shared)
    assert rec["norm_last_layer"] is False and rec["masker"]["mode"] == "hint" and rec["masker"]["ratio_range"] == [0.1, 0.5]
    s, t = ck["student"], ck["teacher"]
    x = images()
    with torch.no_grad():
        # features: the teacher (what mim eval reads) and the student, [CLS] + patches
        ref_t, ref_s = ref_vit(t, x, pre="backbone."), ref_vit(s, x, pre="module.backbone.")
        assert maxdiff(model.eval_encoder.forward_features(x), ref_t) <= TOL
        assert maxdiff(model.encoder.forward_features(x), ref_s) <= TOL
        assert maxdiff(model.features(x, "cls"), ref_t[:, 0]) <= TOL
        # heads: [CLS] and patch prototype logits, weight-normalized last layer(s)
        s_logits = model.head(ref_s)
        rc, rp = ref_head(s, ref_s, pre="module.head.")
        assert maxdiff(s_logits[:, 0], rc) <= TOL and maxdiff(s_logits[:, 1:], rp) <= TOL
        t_logits = model.teacher.copies["head"](ref_t, shared=True)
        rc, rp = ref_head(t, ref_t, pre="head.")
        assert maxdiff(t_logits[:, 0], rc) <= TOL and maxdiff(t_logits[:, 1:], rp) <= TOL
        if not shared:  # the student's own patch prototypes are really used
            assert maxdiff(s_logits[:, 1:], ref_head({**s, "module.head.last_layer2.weight_v": s["module.head.last_layer.weight_v"],
                                                       "module.head.last_layer2.weight_g": s["module.head.last_layer.weight_g"]},
                                                      ref_s, pre="module.head.")[1]) > 1e-3
    assert torch.equal(model.ibot_loss.center, ck["ibot_loss"]["center"])


def test_explicit_mask_forward_equals_the_official_masked_forward_and_loss(tmp_path) -> None:
    ck = full_checkpoint(shared_student=False, seed=10)
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    model = mimkit.load(path)
    s, t = ck["student"], ck["teacher"]
    x1, x2 = images(3, 1), images(3, 2)
    g = torch.Generator().manual_seed(3)
    m1, m2 = torch.rand(3, N, generator=g) < 0.4, torch.rand(3, N, generator=g) < 0.4
    m1[2] = False  # an unmasked image (masking_prob < 1)
    with torch.no_grad():
        out = model({"image": x1, "image_target": x2}, mask=[m1, m2])
        xs, ms = torch.cat([x1, x2]), torch.cat([m1, m2])
        ref_s, ref_t = ref_vit(s, xs, ms, pre="module.backbone."), ref_vit(t, xs, pre="backbone.")
        assert torch.equal(torch.cat([h.hidden for h in out.extra["masks"]]), ms)
        assert maxdiff(out.latent, ref_s[:3]) <= TOL  # the student's masked view 1
        assert maxdiff(out.extra["teacher_latent"], ref_t) <= TOL
        s_cls, s_patch = ref_head(s, ref_s, pre="module.head.")
        t_cls, t_patch = ref_head(t, ref_t, pre="head.")
        l1, l2 = ref_loss(s_cls, s_patch, t_cls, t_patch, [m1.view(3, SIDE, SIDE), m2.view(3, SIDE, SIDE)],
                          ck["ibot_loss"]["center"], ck["ibot_loss"]["center2"], 0.04, 0.04)  # epoch 0 of the table
    # the loss divides logits by 0.04 / 0.1: float32 rounding grows with the value (~15 here)
    assert float(out.losses["cls"]) == pytest.approx(float(l1), rel=1e-5)
    assert float(out.losses["patch"]) == pytest.approx(float(l2), rel=1e-5)
    # the masked path differs from the unmasked one where tokens are hidden (the mask is used)
    assert maxdiff(out.latent, ref_vit(s, x1, pre="module.backbone.")) > 1e-2


@pytest.mark.parametrize("with_head", [False, True])
def test_backbone_only_teacher_file(tmp_path, with_head: bool) -> None:
    """extract_backbone_weights.py --checkpoint_key teacher: {'state_dict': backbone keys (+ head.*)}."""
    ck = full_checkpoint()
    state = {k[len("backbone."):]: v for k, v in ck["teacher"].items() if k.startswith("backbone.")}
    if with_head:
        state.update({k: v for k, v in ck["teacher"].items() if k.startswith("head.")})
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": state}, path)
    with pytest.warns(UserWarning, match="backbone-only iBOT/AttMask checkpoint"):
        model = mimkit.load(path)
    x = images()
    with torch.no_grad():
        ref = ref_vit(state, x)
        assert maxdiff(model.eval_encoder.forward_features(x), ref) <= TOL
        assert maxdiff(model.encoder.forward_features(x), ref) <= TOL
        if with_head:
            rc, rp = ref_head(state, ref, pre="head.")
            logits = model.head(ref)
            assert maxdiff(logits[:, 0], rc) <= TOL and maxdiff(logits[:, 1:], rp) <= TOL
            assert model.recipe.model["out_dim"] == K and model.recipe.model["hidden_dim"] == HID


def test_student_backbone_file_keeps_the_mask_embedding(tmp_path) -> None:
    """checkpoint_student.pth (--checkpoint_key student): the DDP prefix cut, masked_embed kept."""
    ck = full_checkpoint(seed=20)
    state = {k[len("module.backbone."):]: v for k, v in ck["student"].items() if k.startswith("module.backbone.")}
    path = tmp_path / "checkpoint_student.pth"
    torch.save({"state_dict": state}, path)
    with pytest.warns(UserWarning, match="projection heads"):
        model = mimkit.load(path)
    x = images(2, 7)
    m = torch.rand(2, N, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        out = model({"image": x, "image_target": x}, mask=[m, m])
        assert maxdiff(out.latent, ref_vit(state, x, m)) <= TOL


def test_convert_official_into_a_preset_of_another_size() -> None:
    """The README's path: a preset with size overrides + convert_official (load with strict=False)."""
    ck = full_checkpoint(seed=30)
    model = mimkit.build({"method": "attmask_vit_small_patch16"}, [
        f"data.base.img_size={IMG}", f"model.encoder.patch_size={P}", f"model.encoder.embed_dim={D}",
        f"model.encoder.depth={DEPTH}", f"model.encoder.num_heads={HEADS}", f"model.out_dim={K}",
        f"model.hidden_dim={HID}", f"model.bottleneck_dim={BOT}", "data.base.channels=3"]).eval()
    result = model.load_state_dict(convert_official(ck), strict=False)
    assert result.missing_keys == ["teacher.last_momentum"] and result.unexpected_keys == []
    x = images()
    with torch.no_grad():
        assert maxdiff(model.eval_encoder.forward_features(x), ref_vit(ck["teacher"], x, pre="backbone.")) <= TOL
    bare = {k[len("backbone."):]: v for k, v in ck["teacher"].items() if k.startswith("backbone.")}
    state = convert_official(bare)  # a bare teacher backbone: both encoders, no head
    assert not any(".head." in k or k.startswith("head.") for k in state)
    assert torch.equal(state["encoder.vit.blocks.1.attn.qkv.weight"], bare["blocks.1.attn.qkv.weight"])
    assert torch.equal(state["teacher.copies.encoder.vit.norm.bias"], bare["norm.bias"])


def test_other_files_fall_through_to_other_importers(tmp_path) -> None:
    ck = full_checkpoint()
    dino = {"student": {k: v for k, v in ck["student"].items() if "last_layer2" not in k and "masked_embed" not in k},
            "teacher": {k: v for k, v in ck["teacher"].items() if "last_layer2" not in k}, "epoch": 1}
    bare_vit = {k[len("backbone."):]: v for k, v in ck["teacher"].items() if k.startswith("backbone.")}
    for obj in (dino, bare_vit, {"model": bare_vit}, {"state_dict": {"conv1.weight": torch.zeros(1)}}, [1, 2], {"x": 1}):
        assert import_official(obj) is None
    path = tmp_path / "mae.pth"
    torch.save({"model": bare_vit}, path)  # an MAE encoder-only file: mimkit-mae's importer takes it
    with pytest.warns(UserWarning, match="encoder-only MAE"):
        assert mimkit.load(path).recipe.model["name"] == "masked"


@pytest.mark.parametrize("edit, key", [
    (lambda ck: ck["teacher"].pop("backbone.blocks.1.mlp.fc2.bias"), "blocks.1.mlp.fc2.bias"),
    (lambda ck: ck["student"].update({"module.head.mlp.1.running_mean": torch.zeros(HID)}), "head.mlp.1.running_mean"),
    (lambda ck: ck["student"].update({"module.backbone.blocks.0.gamma_1": torch.ones(D)}), "blocks.0.gamma_1"),
    (lambda ck: ck["teacher"].update({"neck.weight": torch.ones(D)}), "neck.weight"),
    (lambda ck: ck["teacher"].update({"backbone.norm.weight": torch.ones(D + 1)}), "norm.weight"),
    (lambda ck: ck["teacher"].pop("head.mlp.2.weight"), "head.mlp.2.weight"),
])
def test_inconsistent_ibot_file_is_an_error_naming_the_key(tmp_path, edit, key: str) -> None:
    ck = full_checkpoint()
    edit(ck)
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        mimkit.load(path)


def test_evaluation_loads_the_official_file_and_reads_the_teacher(tmp_path) -> None:
    """``mim eval knn|linprobe|finetune FILE`` go through load_source -> mimkit.load -> eval_encoder."""
    from mimkit.plugin_api import load_source

    ck = full_checkpoint(seed=40)
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    model = load_source(path)
    x = images(2, 9)
    with torch.no_grad():
        ref = ref_vit(ck["teacher"], x, pre="backbone.")
        assert maxdiff(model.eval_encoder.forward_features(x), ref) <= TOL
        assert maxdiff(model.features(x, "cls"), ref[:, 0]) <= TOL


def test_separate_patch_prototypes_train_and_follow_the_official_head() -> None:
    """shared_head false: (B, D) input meets the [CLS] prototypes only (official 2-d path); the
    patch prototypes get gradients from the patch term; the frozen last layers get none."""
    torch.manual_seed(0)
    model = mimkit.build({"method": "attmask_tiny_fashion_mnist"}, ["model.shared_head=false"])
    head = model.head
    z = torch.randn(4, 192)
    assert torch.equal(head(z), head(z.unsqueeze(1))[:, 0]) and not torch.equal(head.last_v, head.last_v2)
    x = torch.randn(2, 1, 32, 32)
    m = torch.zeros(2, 64, dtype=torch.bool)
    m[:, :20] = True
    out = model({"image": x, "image_target": x.flip(-1)}, mask=[m, m])
    out.losses["patch"].backward()
    assert float(head.last_v2.grad.abs().sum()) > 0 and float(head.last_v.grad.abs().sum()) == 0
    head.freeze_last = True
    head.zero_grad(set_to_none=True)
    (head(torch.randn(2, 5, 192)) ** 2).sum().backward()
    assert head.last_v.grad is None and head.last_v2.grad is None and head.mlp[0].weight.grad is not None


IBOT_ARGS = {"masking_prob": None, "show_max": None}  # main_ibot.py has no AttMask arguments


@pytest.mark.parametrize("shape, ratio, var, start, expect", [
    ("block", [0.0, 0.3], [0.0, 0.2], 0, ([0.0, 0.3], [0.0, 0.2])),  # the ViT-S/16 run command
    ("block", 0.3, 0, 2, (0.3, 0.0)),  # the argparse defaults (floats when not passed), a start epoch
    ("rand", [0.3], [0.1], 0, (0.3, 0.1)),  # one-element lists are scalars (ImageFolderMask)
])
def test_ibot_files_train_on_with_their_own_masks(tmp_path, recwarn, shape, ratio, var, start, expect) -> None:
    """An iBOT file's --pred_shape block|rand picks ibot_block|ibot_rand with its ratio, variance
    and start epoch (the patch-temperature table shifts with it); no fallback warning."""
    path = tmp_path / "checkpoint.pth"
    torch.save(full_checkpoint(pred_shape=shape, pred_ratio=ratio, pred_ratio_var=var, pred_start_epoch=start,
                               **IBOT_ARGS), path)
    model = mimkit.load(path)
    assert not [w for w in recwarn if "masker" in str(w.message)], [str(w.message) for w in recwarn]
    spec = model.recipe.model["masker"]
    assert spec["name"] == f"ibot_{shape}"
    assert (spec["pred_ratio"], spec["pred_ratio_var"], spec["pred_start_epoch"]) == (*expect, start)
    masker = model.masker.inner
    assert type(masker).__name__ == ("IBOTBlockMasker" if shape == "block" else "IBOTRandMasker")
    if shape == "block":
        assert masker.config.pred_aspect_ratio == pytest.approx((0.3, 1 / 0.3))
    assert model.ibot_loss.mim_start_epoch == start
    assert model.ibot_loss.temperatures(0)[1] == 0.04 and model.teacher.config.attention is False
    # it trains on: one step with the loader-side masks of its own masker
    g = torch.Generator().manual_seed(0)
    x1, x2 = images(seed=1), images(seed=2)
    noise = torch.stack([model.masker.sample_noise(g) for _ in range(x1.shape[0])])  # (B, 2N) bool
    batch = {"image": x1, "image_target": x2, "mask_noise": noise}
    if start:  # before pred_start_epoch: nothing hidden, no masked-patch term (official ratio 0)
        out = model(batch, Context(epoch=start - 1))
        assert not any(bool(m.hidden.any()) for m in out.extra["masks"]) and float(out.losses["patch"]) == 0.0
    out = model(batch, Context(epoch=start))
    hidden = torch.cat([m.hidden for m in out.extra["masks"]])
    assert torch.equal(hidden, torch.cat(list(noise.chunk(2, dim=1))))  # the maps reach the student as drawn
    assert torch.isfinite(out.loss)


def test_unknown_pred_shape_falls_back_with_a_warning(tmp_path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save(full_checkpoint(pred_shape="grid", **IBOT_ARGS), path)
    with pytest.warns(UserWarning, match="--pred_shape 'grid' has no mimkit masker"):
        model = mimkit.load(path)
    assert "masker" not in model.recipe.model and type(model.masker.inner).__name__ == "AttentionGuidedMasker"
