"""Official Jiahao000/MFM checkpoints load through ``mimkit.load`` and give the official outputs.

The reference below is written in plain torch from the official formulas (``models/mfm.py``
``MFM.forward`` / ``frequency_transform``, ``models/vision_transformer.py`` BEiT blocks with
``q_bias``/``v_bias`` and optional ``gamma_1``/``gamma_2``, timm's Bottleneck ResNet that
``ResNetForMFM`` subclasses, ``models/frequency_loss.py``, ``data/data_mfm.py``
``FreqMaskGenerator``), reading random weights stored under the official key names; the file is
written as ``utils.save_checkpoint`` writes it (a yacs config included).
"""
from __future__ import annotations

import collections
import math

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.errors import CheckpointError
from mimkit_mfm import convert_official, import_official, recipe_for

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
D, DEPTH, HEADS, P, IMG = 128, 2, 2, 8, 32  # tiny ViT: 16 tokens; 2 heads (read from the file's config)
RIMG = 64  # ResNet-50 input: a 2x2 last feature map


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- random weights in the official layout -------------------------------------------------------

def _rand(g):
    return lambda *s, scale=0.05: torch.randn(*s, generator=g) * scale


def official_vit_state(seed=0, gamma=False, decoder=True, dim=D, depth=DEPTH):
    r = _rand(torch.Generator().manual_seed(seed))
    sd = {"encoder.cls_token": r(1, 1, dim), "encoder.pos_embed": r(1, 1 + (IMG // P) ** 2, dim),
          "encoder.patch_embed.proj.weight": r(dim, 3, P, P), "encoder.patch_embed.proj.bias": r(dim),
          "encoder.norm.weight": 1 + r(dim), "encoder.norm.bias": r(dim)}
    for i in range(depth):
        pre = f"encoder.blocks.{i}."
        sd.update({pre + "norm1.weight": 1 + r(dim), pre + "norm1.bias": r(dim),
                   pre + "attn.qkv.weight": r(3 * dim, dim, scale=0.1), pre + "attn.q_bias": r(dim),
                   pre + "attn.v_bias": r(dim), pre + "attn.proj.weight": r(dim, dim), pre + "attn.proj.bias": r(dim),
                   pre + "norm2.weight": 1 + r(dim), pre + "norm2.bias": r(dim),
                   pre + "mlp.fc1.weight": r(4 * dim, dim), pre + "mlp.fc1.bias": r(4 * dim),
                   pre + "mlp.fc2.weight": r(dim, 4 * dim), pre + "mlp.fc2.bias": r(dim)})
        if gamma:
            sd.update({pre + "gamma_1": 0.1 + r(dim), pre + "gamma_2": 0.1 + r(dim)})
    if decoder:
        sd.update({"decoder.0.weight": r(P * P * 3, dim, 1, 1), "decoder.0.bias": r(P * P * 3)})
    return sd


def official_resnet50_state(seed=0, decoder=True):
    """timm's ResNet(Bottleneck, [3, 4, 6, 3], num_classes=0) key names under ``encoder.``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, cout, cin, k):
        sd[key] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def bn(pre, c, gain=1.0):
        sd.update({pre + "weight": gain * (1 + 0.1 * torch.randn(c, generator=g)), pre + "bias": 0.1 * torch.randn(c, generator=g),
                   pre + "running_mean": 0.1 * torch.randn(c, generator=g),
                   pre + "running_var": 1 + 0.1 * torch.rand(c, generator=g), pre + "num_batches_tracked": torch.tensor(1000)})

    conv("encoder.conv1.weight", 64, 3, 7)
    bn("encoder.bn1.", 64)
    cin = 64
    for stage, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(n):
            pre = f"encoder.layer{stage}.{b}."
            conv(pre + "conv1.weight", planes, cin, 1)
            bn(pre + "bn1.", planes)
            conv(pre + "conv2.weight", planes, planes, 3)
            bn(pre + "bn2.", planes)
            conv(pre + "conv3.weight", planes * 4, planes, 1)
            bn(pre + "bn3.", planes * 4, gain=0.2)  # small residual branches keep 16 blocks tame
            if b == 0:
                conv(pre + "downsample.0.weight", planes * 4, cin, 1)
                bn(pre + "downsample.1.", planes * 4, gain=0.5)
            cin = planes * 4
    if decoder:
        sd.update({"decoder.0.weight": torch.randn(32 * 32 * 3, 2048, 1, 1, generator=g) * 0.01,
                   "decoder.0.bias": torch.randn(32 * 32 * 3, generator=g) * 0.01})
    return sd


def official_config(kind, heads=HEADS, img=IMG, radius=6, ratio=0.5):
    """The run's yacs config as ``main_mfm.py`` saves it (the fields the importer reads)."""
    yacs = pytest.importorskip("yacs.config")
    CN = yacs.CfgNode
    c = CN()
    c.DATA = CN({"IMG_SIZE": img, "FILTER_TYPE": "mfm", "SAMPLE_RATIO": ratio, "MASK_RADIUS1": radius,
                 "MASK_RADIUS2": 999})
    c.MODEL = CN({"TYPE": kind, "RECOVER_TARGET_TYPE": "masked"})
    c.MODEL.VIT = CN({"NUM_HEADS": heads, "INIT_VALUES": None, "USE_RPB": False})
    c.MODEL.FREQ_LOSS = CN({"LOSS_GAMMA": 1.0, "MATRIX_GAMMA": 1.0, "PATCH_FACTOR": 1, "AVE_SPECTRUM": False,
                            "WITH_MATRIX": False, "LOG_MATRIX": False, "BATCH_MATRIX": False})
    c.TRAIN = CN({"OPTIMIZER": CN({"BETAS": (0.9, 0.95)})})
    c.freeze()
    return c


def save_official(path, sd, config=None):
    """``utils.save_checkpoint``'s layout (optimizer/scheduler states shortened)."""
    obj = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]},
           "lr_scheduler": {"t_initial": 300, "warmup_t": 20, "base_values": [1.2e-3]}, "max_accuracy": 0.0,
           "epoch": 299, "amp": collections.OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": 12})}
    if config is not None:
        obj["config"] = config
    torch.save(obj, path)
    return path


# -- the official forward, written out -----------------------------------------------------------

def freq_mask(size, r1, r2, lowpass):
    """FreqMaskGenerator: 1 = kept; the low-pass mask, or its complement for high-pass."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = (xs - size // 2) ** 2 + (ys - size // 2) ** 2
    mask = torch.ones(size, size)
    mask[(d2 >= r1**2) & (d2 < r2**2)] = 0
    return mask if lowpass else 1 - mask


def vit_encoder(sd, x, heads, gamma):
    x = F.conv2d(x, sd["encoder.patch_embed.proj.weight"], sd["encoder.patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([sd["encoder.cls_token"].expand(b, -1, -1), x], 1) + sd["encoder.pos_embed"]
    n, d = x.shape[1], x.shape[2]
    i = 0
    while f"encoder.blocks.{i}.norm1.weight" in sd:
        pre = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (d,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[pre + "attn.q_bias"], torch.zeros(d), sd[pre + "attn.v_bias"]])
        qkv = F.linear(h, sd[pre + "attn.qkv.weight"], bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (d // heads) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        h = F.linear((a @ v).transpose(1, 2).reshape(b, n, d), sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        x = x + (sd[pre + "gamma_1"] * h if gamma else h)
        h = F.layer_norm(x, (d,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                     sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        x = x + (sd[pre + "gamma_2"] * h if gamma else h)
        i += 1
    x = F.layer_norm(x, (d,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps=1e-6)[:, 1:]
    side = int(round(x.shape[1] ** 0.5))
    return x.permute(0, 2, 1).reshape(b, d, side, side)  # (B, D, h, w)


def resnet_encoder(sd, x, layers=(3, 4, 6, 3)):
    def bn(t, pre):
        return F.batch_norm(t, sd[pre + "running_mean"], sd[pre + "running_var"], sd[pre + "weight"], sd[pre + "bias"],
                            False, 0.0, 1e-5)

    x = F.relu(bn(F.conv2d(x, sd["encoder.conv1.weight"], stride=2, padding=3), "encoder.bn1."))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, n in enumerate(layers, start=1):
        for b in range(n):
            pre, s = f"encoder.layer{stage}.{b}.", (2 if stage > 1 and b == 0 else 1)
            h = F.relu(bn(F.conv2d(x, sd[pre + "conv1.weight"]), pre + "bn1."))
            h = F.relu(bn(F.conv2d(h, sd[pre + "conv2.weight"], stride=s, padding=1), pre + "bn2."))
            h = bn(F.conv2d(h, sd[pre + "conv3.weight"]), pre + "bn3.")
            sc = x if b else bn(F.conv2d(x, sd[pre + "downsample.0.weight"], stride=s), pre + "downsample.1.")
            x = F.relu(h + sc)
    return x  # (B, 2048, H/32, W/32)


def freq_loss_map(pred, target):
    """FrequencyLoss (patch_factor 1, no matrix, gamma 1): (B, 1, C, H, W)."""
    def t2f(t):
        f = torch.fft.fftshift(torch.fft.fft2(t.unsqueeze(1).float(), norm="ortho"), dim=(-2, -1))
        return torch.stack([f.real, f.imag], -1)

    tmp = (t2f(pred) - t2f(target)) ** 2
    return torch.sqrt(tmp[..., 0] + tmp[..., 1] + 1e-12)


def official_mfm(sd, img, mask, encoder, stride):
    """MFM.forward with FILTER_TYPE mfm, RECOVER_TARGET_TYPE masked; img in [0, 1], mask (B, H, W)."""
    mask = mask.unsqueeze(1)  # (B, 1, H, W)
    freq = torch.fft.fftshift(torch.fft.fft2(img), dim=(-2, -1)) * mask
    corrupted = torch.fft.ifft2(torch.fft.ifftshift(freq, dim=(-2, -1))).real.clamp(0.0, 1.0)
    corrupted = (corrupted - MEAN) / STD
    x = (img - MEAN) / STD
    z = encoder(corrupted)
    rec = F.pixel_shuffle(F.conv2d(z, sd["decoder.0.weight"], sd["decoder.0.bias"]), stride)
    lr = freq_loss_map(rec, x)
    loss = (lr * (1 - mask.unsqueeze(1))).sum() / (1 - mask).sum() / 3 / lr.shape[1]
    return z, rec, loss, corrupted


def compare(model, sd, img, lowpass, radius, encoder, stride, p_lowpass):
    masks = torch.stack([freq_mask(img.shape[-1], radius, 999, lo) for lo in lowpass])
    z, rec, loss, corrupted = official_mfm(sd, img, masks, encoder, stride)
    noise = torch.tensor([[p_lowpass / 2] if lo else [(1 + p_lowpass) / 2] for lo in lowpass])  # low iff u < p
    with torch.no_grad():
        out = model({"image": (img - MEAN) / STD}, noise=noise)
    tokens = out.latent[:, model.encoder.num_prefix_tokens:]
    feats = tokens.transpose(1, 2).reshape(z.shape)
    errs = {"input": (out.mask.corrupted - corrupted).abs().max().item(),
            "features": (feats - z).abs().max().item(),
            "pred": (out.pred - rec).abs().max().item(),
            "loss": abs(out.loss.item() - loss.item())}
    return errs, loss.item()


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [False, True], ids=["released", "layer_scale"])
def test_vit_official_checkpoint_gives_official_outputs(tmp_path, gamma):
    sd = official_vit_state(gamma=gamma)
    path = save_official(tmp_path / "mfm_vit.pth", sd, official_config("vit"))
    model = mimkit.load(path)
    enc = model.recipe.model["encoder"]
    assert (enc["num_heads"], enc["depth"], enc["embed_dim"], enc["img_size"]) == (HEADS, DEPTH, D, IMG)
    assert model.recipe.model["masker"]["radius"] == 6 and model.recipe.model["masker"]["p_lowpass"] == 0.5
    img = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    errs, loss = compare(model, sd, img, [True, False], 6, lambda x: vit_encoder(sd, x, HEADS, gamma), P, 0.5)
    print(f"vit gamma={gamma} loss={loss:.6f} errors={errs}")
    assert errs["input"] <= 1e-5 and errs["features"] <= 1e-5 and errs["pred"] <= 1e-5 and errs["loss"] <= 1e-6, errs


def test_resnet50_official_checkpoint_gives_official_outputs(tmp_path):
    sd = official_resnet50_state()
    path = save_official(tmp_path / "mfm_r50.pth", sd, official_config("resnet", img=RIMG, radius=8, ratio=0.3))
    model = mimkit.load(path)
    assert model.recipe.model["encoder"]["model"] == "resnet50" and model.recipe.model["masker"]["p_lowpass"] == 0.3
    img = torch.rand(2, 3, RIMG, RIMG, generator=torch.Generator().manual_seed(2))
    errs, loss = compare(model, sd, img, [False, True], 8, lambda x: resnet_encoder(sd, x), 32, 0.3)
    print(f"resnet50 loss={loss:.6f} errors={errs}")
    assert errs["input"] <= 1e-5 and errs["features"] <= 1e-5 and errs["pred"] <= 1e-5 and errs["loss"] <= 1e-6, errs


def test_bare_state_and_preset_with_convert_official():
    """No config in the file: sizes from the weights (heads from the official table), the
    preset's masking; the README's path: a preset + overrides + convert_official."""
    sd = official_vit_state(seed=4, dim=192)
    recipe = recipe_for(sd)
    assert recipe["model"]["encoder"]["num_heads"] == 3 and recipe["model"]["masker"]["radius"] == 16
    model = mimkit.build({"method": "mfm_vit_base_patch16"}, [
        f"data.img_size={IMG}", f"model.encoder.patch_size={P}", "model.encoder.embed_dim=192",
        f"model.encoder.depth={DEPTH}", "model.encoder.num_heads=3", "model.masker.radius=5"]).eval()
    model.load_state_dict(convert_official(sd))
    img = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    errs, _ = compare(model, sd, img, [True, True], 5, lambda x: vit_encoder(sd, x, 3, False), P, 0.5)
    assert max(errs.values()) <= 1e-5, errs


def test_encoder_only_file_loads_with_a_warning(tmp_path):
    sd = official_vit_state(seed=5, decoder=False)
    path = tmp_path / "mfm_vit_encoder.pth"
    torch.save({"model": sd}, path)
    with pytest.warns(UserWarning, match="encoder-only"):
        model = mimkit.load(path)  # heads: 128 // 64 = 2
    img = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(6))
    x = (img - MEAN) / STD
    with torch.no_grad():
        feats = model.encoder.forward_features(x)[:, 1:]
    ref = vit_encoder(sd, x, HEADS, False).flatten(2).transpose(1, 2)
    assert (feats - ref).abs().max().item() <= 1e-5


def test_resnet_encoder_only_file_loads_with_a_warning(tmp_path):
    sd = {k: v for k, v in official_resnet50_state(seed=7, decoder=False).items()}
    with pytest.warns(UserWarning, match="encoder-only"):
        recipe, state, strict = import_official({"model": sd})
    assert not strict and recipe["model"]["encoder"]["img_size"] == 224  # not in the weights: the official size
    assert state["encoder.net.layer4.2.bn3.running_var"] is sd["encoder.layer4.2.bn3.running_var"]


@pytest.mark.parametrize("edit, key", [
    (lambda sd: sd.update({"encoder.rel_pos_bias.relative_position_bias_table": torch.zeros(3, 2)}),
     "encoder.rel_pos_bias.relative_position_bias_table"),
    (lambda sd: sd.pop("encoder.blocks.1.attn.v_bias"), "encoder.blocks.1.attn.v_bias"),
    (lambda sd: sd.update({"decoder.0.weight": torch.zeros(100, D, 1, 1)}), "decoder.0.weight"),
    (lambda sd: sd.update({"decoder.blocks.0.norm1.weight": torch.zeros(D)}), "decoder.blocks.0.norm1.weight"),
    (lambda sd: sd.update({f"encoder.blocks.{i}.gamma_1": torch.zeros(D) for i in range(DEPTH)}),
     "encoder.blocks.0.gamma_2"),
    (lambda sd: sd.pop("encoder.blocks.1.mlp.fc2.bias"), "encoder.blocks.1.mlp.fc2.bias"),
    (lambda sd: sd.pop("encoder.norm.weight"), "encoder.norm.weight"),
])
def test_inconsistent_mfm_file_is_a_clear_error(tmp_path, edit, key):
    sd = official_vit_state(seed=8)
    edit(sd)
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        mimkit.load(path)


def test_unrecognized_files_fall_through(tmp_path):
    assert import_official({"model": {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}}) is None  # MAE-style
    model = mimkit.build({"method": "mfm_tiny_fashion_mnist"}, ["model.encoder.depth=1"])
    assert import_official({"model": model.state_dict()}) is None  # mimkit's own layout
    assert import_official([1, 2]) is None
    simmim = official_vit_state()
    simmim["encoder.mask_token"] = torch.zeros(1, 1, D)  # microsoft/SimMIM: same ViT code, with a mask token
    assert import_official({"model": simmim}) is None
    other = official_vit_state()
    other["head.weight"] = torch.zeros(2, D)  # a key outside MFM's two submodules: some other method's file
    assert import_official({"model": other}) is None
    path = tmp_path / "other.pth"
    torch.save({"model": {"something.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no installed importer recognizes"):
        mimkit.load(path)


def test_layer_scale_option_starts_at_its_value():
    model = mimkit.build({"method": "mfm_tiny_fashion_mnist"}, ["model.encoder.depth=2", "model.encoder.layer_scale=0.1"])
    gammas = [blk.ls1.gamma for blk in model.encoder.vit.blocks] + [blk.ls2.gamma for blk in model.encoder.vit.blocks]
    assert len(gammas) == 4 and all(torch.equal(g, torch.full_like(g, 0.1)) for g in gammas)
    plain = mimkit.build({"method": "mfm_tiny_fashion_mnist"}, ["model.encoder.depth=2"])
    assert not any(".ls1." in k for k in plain.state_dict())


def test_fresh_process_loads_a_file_with_its_yacs_config(tmp_path):
    """``mimkit.load`` loads the plugins (and their allowlisted classes) before ``torch.load``."""
    import subprocess
    import sys

    path = save_official(tmp_path / "mfm_vit.pth", official_vit_state(), official_config("vit"))
    code = f"import mimkit; m = mimkit.load({str(path)!r}); print(m.recipe.model['encoder']['num_heads'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(HEADS)
