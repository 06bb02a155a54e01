"""Audio-MAE fine-tuning: random_masking_2d statistics and structure, the classifier against the
encoder it came from, the official layer-decay groups, roll_mag = torch.roll x gain, mixup, and a
tiny fine-tune on the flite spoken digits that beats chance."""
from __future__ import annotations

import shutil

import pytest
import torch

import mimkit
import mimkit.testing as testing
from mimkit.plugin_api import registry
from mimkit_audio import fbank, pad_or_cut
from mimkit_audio.data import AudioFeatures
from mimkit_audiomae import AudioClassifier, AudioFinetune, random_masking_2d
from mimkit_audiomae.finetune import mix_batch, param_groups_lrd


one_thread = pytest.fixture(autouse=True, scope="module")(testing.one_thread)  # tiny models: one thread

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh)")
SMALL = {"method": "audiomae_tiny_spoken_digits",
         "model": {"encoder": {"embed_dim": 64, "depth": 2, "num_heads": 2},
                   "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}}}


def test_random_masking_2d_keeps_whole_columns_and_rows_with_the_right_frequencies() -> None:
    gt, gf, draws = 8, 8, 4000
    ids = torch.arange(gt * gf, dtype=torch.float32).view(1, -1, 1).expand(draws, -1, -1)  # token index as feature
    g = torch.Generator().manual_seed(0)
    nt, nf = torch.rand(draws, gt, generator=g), torch.rand(draws, gf, generator=g)
    kept = random_masking_2d(ids, (gt, gf), 0.2, 0.2, nt, nf)[..., 0].long()  # (draws, 36)
    assert kept.shape == (draws, 6 * 6)  # int(8 * 0.8) columns x int(8 * 0.8) rows
    keep_t, keep_f = torch.argsort(nt, 1)[:, :6], torch.argsort(nf, 1)[:, :6]
    # a direct construction: the kept tokens are exactly (t, f) for the 6 smallest-noise columns and rows,
    # columns in ascending-noise order, rows likewise within each column (the official gathers)
    want = (keep_t[:, :, None] * gf + keep_f[:, None, :]).reshape(draws, -1)
    assert torch.equal(kept, want)
    hit = torch.zeros(draws, gt * gf).scatter_(1, kept, 1.0)
    col = hit.view(draws, gt, gf).amax(2)  # a column is kept if any of its tokens is
    row = hit.view(draws, gt, gf).amax(1)
    assert torch.equal(hit.view(draws, gt, gf), col[:, :, None] * row[:, None, :])  # hidden = column OR row hidden
    se = (0.75 * 0.25 / draws) ** 0.5
    assert (col.mean(0) - 0.75).abs().max() < 5 * se and (row.mean(0) - 0.75).abs().max() < 5 * se
    assert abs(float(hit.mean()) - 36 / 64) < 1e-6


def _classifier(pool: str, mask: float = 0.0) -> tuple[torch.nn.Module, AudioClassifier]:
    torch.manual_seed(0)
    model = mimkit.build(SMALL).eval()
    return model, AudioClassifier(model.encoder, 10, pool=pool, drop_path=0.1, mask_t=mask, mask_f=mask)


def test_classifier_is_the_encoder_plus_a_head_and_masks_only_in_training() -> None:
    x = torch.randn(3, 1, 128, 128)
    model, clf = _classifier("cls", mask=0.2)
    clf.eval()
    feats = model.encoder.pool(model.encoder.forward_features(x), "cls")  # final norm -> [CLS]
    torch.testing.assert_close(clf(x), clf.head(feats), atol=1e-5, rtol=1e-5)
    model, clf = _classifier("mean", mask=0.2)
    clf.eval()
    _, layers = model.encoder.encode(model.encoder.embed(x), return_layers=True)
    want = clf.head(clf.fc_norm(layers[-1][:, 1:].mean(1)))  # global_pool: mean of patch tokens, fresh fc_norm
    torch.testing.assert_close(clf(x), want, atol=1e-5, rtol=1e-5)
    seen = []
    clf.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    clf(x)
    clf.train()
    clf(x, torch.Generator().manual_seed(0))
    assert seen == [1 + 64, 1 + 36]  # eval: every token; train: [CLS] + 6 x 6 kept
    assert float(clf.head.weight.detach().std()) < 1e-4  # trunc-normal std 2e-5, as the official head init


def test_layer_decay_groups_follow_the_official_param_groups_lrd() -> None:
    _, clf = _classifier("mean")
    groups = param_groups_lrd(clf, weight_decay=0.05, layer_decay=0.75)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(clf.named_parameters())
    assert id(named["pos_embed"]) not in scale  # the fixed table is not trained
    assert scale[id(named["cls_token"])] == (0.75 ** 3, 0.0)
    assert scale[id(named["patch_embed.proj.weight"])] == (0.75 ** 3, 0.05)
    assert scale[id(named["blocks.0.attn.qkv.weight"])] == (0.75 ** 2, 0.05)
    assert scale[id(named["blocks.1.norm1.weight"])] == (0.75, 0.0)
    assert scale[id(named["head.weight"])] == (1.0, 0.05) and scale[id(named["fc_norm.bias"])] == (1.0, 0.0)


def test_roll_augmentation_is_torch_roll_times_the_gain() -> None:
    g = torch.Generator().manual_seed(3)
    wav = torch.randn(16000, generator=g) * torch.linspace(0, 1, 16000)  # not shift-invariant
    feats = AudioFeatures(target_length=128, roll_mag=True, roll_mono=True)
    torch.manual_seed(7)
    got = feats.waveform_to_input(wav, train=True)
    torch.manual_seed(7)  # the same draws: the shift, then the Beta(10, 10) gain
    shift = int(torch.randint(0, wav.numel(), ()))
    gain = torch.distributions.Beta(10.0, 10.0).sample() + 0.5
    centred = wav - wav.mean()
    want = pad_or_cut(fbank(torch.roll(centred, shift) * gain), 128)
    want = ((want - feats.mean) / (2 * feats.std)).unsqueeze(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert shift != 0 and not torch.allclose(got, feats.waveform_to_input(wav, train=False), atol=1e-2)
    official = AudioFeatures(target_length=128, roll_mag=True)  # the official: mono audio only rescaled
    torch.manual_seed(7)
    gain = torch.distributions.Beta(10.0, 10.0).sample() + 0.5
    torch.manual_seed(7)
    torch.testing.assert_close(official.waveform_to_input(wav, train=True),
                               ((pad_or_cut(fbank(centred * gain), 128) - feats.mean) / (2 * feats.std)).unsqueeze(0),
                               atol=1e-5, rtol=1e-5)


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 4, 4)
    y = torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()
    xm, ym = mix_batch(x, y, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(ym.sum(1), torch.ones(64))
    lam = ym.max(1).values  # Beta(10, 10) around 0.5 (or 1 when the partner has the same class)
    assert 0.3 < float(lam.mean()) < 0.8
    none_x, none_y = mix_batch(x, y, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(none_x, x) and torch.equal(none_y, y)


@needs_flite
def test_tiny_finetune_beats_chance_on_spoken_digits(tmp_path) -> None:
    assert registry().get("protocols", "audio_finetune") is AudioFinetune
    recipe = tmp_path / "small.yaml"
    recipe.write_text("method: audiomae_tiny_spoken_digits\nmodel:\n  encoder: {embed_dim: 64, depth: 2, num_heads: 2}\n"
                      "  decoder: {embed_dim: 32, depth: 1, num_heads: 2}\n")
    cfg = AudioFinetune.Config(init="random", epochs=6, blr=2e-2, warmup_epochs=1, batch_size=20, layer_decay=1.0,
                               drop_path=0.0)
    record = AudioFinetune(cfg)([str(recipe)])
    assert record["num_test"] == 150 and record["chance"] == 0.1
    # 150 test clips: chance is 0.10 +- 0.025; measured 0.24 (4 standard errors above chance)
    assert record["top1"] >= 0.2, record["summary"]
