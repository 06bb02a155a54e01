"""mimkit-text: the tokenizer against known BERT ids, the towers' pooling, caption data and its
error policy, and prompt ensembling against a direct computation."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mimkit.errors import ConfigError, DataError
from mimkit_text import CaptionedFashionMNIST, ImageTextFolder, WordPieceTokenizer, build_text_tower, class_embeddings


def test_tokenizer_round_trip_ids_padding_and_truncation():
    tok = WordPieceTokenizer(max_len=32)
    assert tok.vocab_size == 30522  # uncased BERT-base, FLIP's vocabulary (+1 row in the embedding)
    ids, valid = tok(["A photo of a Sneaker.", "an ankle boot"])
    vocab = tok.path.read_text().splitlines()  # id = line number in vocab.txt
    assert [vocab[i] for i in ids[0, :7].tolist()] == ["a", "photo", "of", "a", "sneak", "##er", "."]
    assert "[CLS]" not in tok.decode(ids[0]) and ids[0, 0] != tok.cls_id  # FLIP adds no [CLS] by default
    assert valid.sum(1).tolist() == [7, 3] and (ids[~valid] == 0).all()  # padded with [PAD] = 0
    for text in ["a photo of a sneaker.", "a black and white photo of an ankle boot.", "itap of a pullover."]:
        assert tok.decode(tok(["" + text])[0][0]) == text
    long = " ".join(["word"] * 50)
    ids, valid = tok([long])
    assert ids.shape == (1, 32) and bool(valid.all())  # truncated at the max length
    cls_tok = WordPieceTokenizer(max_len=8, add_cls=True)
    ids, valid = cls_tok([long])
    assert ids[0, 0] == cls_tok.cls_id and valid.sum() == 8


def test_transformer_tower_pools_position_zero_and_ignores_nothing_by_default():
    torch.manual_seed(0)
    tower = build_text_tower({"name": "transformer", "width": 32, "depth": 1, "num_heads": 2})
    ids, valid = tower.tokenizer(["a sneaker", "a bag"])
    full = tower.norm(tower.blocks[0](tower.token_embed(ids) + tower.pos_embed))
    assert torch.allclose(tower.forward_ids(ids, valid), full[:, 0], atol=1e-6)  # FLIP: x_txt[:, 0]
    # FLIP attends to padding (mask=None): changing a pad id changes the output; with the mask it does not
    ids2 = ids.clone()
    ids2[0, -1] = 5
    assert not torch.allclose(tower.forward_ids(ids2, valid), tower.forward_ids(ids, valid))
    masked = build_text_tower({"name": "transformer", "width": 32, "depth": 1, "num_heads": 2, "attention_mask": True})
    assert torch.allclose(masked.forward_ids(ids2, valid), masked.forward_ids(ids, valid), atol=1e-6)
    with pytest.raises(ConfigError, match="model.text.name"):
        build_text_tower({"name": "gpt"})
    with pytest.raises(ConfigError, match="model.text.bogus"):
        build_text_tower({"name": "transformer", "bogus": 1})


def test_captioned_fashion_mnist_names_the_label_and_templates_are_seeded():
    ds = CaptionedFashionMNIST(CaptionedFashionMNIST.Config(limit=64), train=True)
    names = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
    seen = set()
    for i in range(64):
        torch.manual_seed(i)
        it = ds[i]
        assert names[it["label"]] in it["text"] and it["image"].shape == (1, 32, 32)
        torch.manual_seed(i)
        assert ds[i]["text"] == it["text"]  # the template is a function of the item's seed
        seen.add(it["text"].replace(names[it["label"]], "{}"))
    assert len(seen) > 1  # several templates used in training
    test = CaptionedFashionMNIST(CaptionedFashionMNIST.Config(split="test", limit=8, augment=False))
    assert test[0]["text"] == f"a photo of a {names[test[0]['label']]}."


def _png(path, color=(200, 10, 10)):
    Image.new("RGB", (20, 16), color).save(path)


def test_image_text_folder_reads_captions_and_refuses_bad_files(tmp_path):
    root = tmp_path / "pairs"
    (root / "animals").mkdir(parents=True)
    _png(root / "animals" / "cat.png")
    (root / "animals" / "cat.txt").write_text("A cat.\nUn chat.\n")
    _png(root / "animals" / "dog.png")
    (root / "animals" / "dog.txt").write_text("A dog.")
    ds = ImageTextFolder(ImageTextFolder.Config(root=str(root), img_size=16, labels="folder"))
    assert [ds[i]["text"] for i in range(len(ds))] == ["A cat.", "A dog."] and ds.classes == ["animals"]
    assert ds[0]["image"].shape == (3, 16, 16)
    _png(root / "animals" / "nocap.png")  # missing caption
    _png(root / "animals" / "latin1.png")
    (root / "animals" / "latin1.txt").write_bytes("Un caf\xe9.".encode("latin-1"))  # not UTF-8
    _png(root / "animals" / "empty.png")
    (root / "animals" / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty.txt is empty"):
        ImageTextFolder(ImageTextFolder.Config(root=str(root)))
    (root / "animals" / "empty.txt").write_text("An empty cage.")
    with pytest.raises(DataError, match="latin1.txt is not UTF-8"):
        ImageTextFolder(ImageTextFolder.Config(root=str(root)))
    (root / "animals" / "latin1.txt").unlink()
    _png(root / "animals" / "latin1.png")
    with pytest.raises(DataError, match="caption file missing: .*latin1.txt"):
        ImageTextFolder(ImageTextFolder.Config(root=str(root)))
    (root / "animals" / "latin1.txt").write_bytes(b"\xff\xfe bad")
    ds = ImageTextFolder(ImageTextFolder.Config(root=str(root), bad_captions="skip"))
    assert len(ds) == 3 and len(ds.skipped) == 2  # latin1 (not UTF-8) and nocap (missing), counted
    assert any("nocap.txt" in s for s in ds.skipped) and any("latin1.txt" in s for s in ds.skipped)


def test_image_text_folder_index_files(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "index.csv").write_text("path,caption\na.png,a red square\nb.png,\n")
    with pytest.raises(DataError, match=r"index.csv line 3: empty or missing caption"):
        ImageTextFolder(ImageTextFolder.Config(root=str(tmp_path), captions="index.csv"))
    ds = ImageTextFolder(ImageTextFolder.Config(root=str(tmp_path), captions="index.csv", bad_captions="skip"))
    assert len(ds) == 1 and ds[0]["text"] == "a red square" and len(ds.skipped) == 1
    (tmp_path / "index.jsonl").write_text(json.dumps({"path": "a.png", "caption": "red"}) + "\n"
                                          + json.dumps({"path": "b.png", "caption": "also red"}) + "\n")
    ds = ImageTextFolder(ImageTextFolder.Config(root=str(tmp_path), captions="index.jsonl", img_size=8))
    assert [ds[i]["text"] for i in range(2)] == ["red", "also red"]
    (tmp_path / "bad.csv").write_text("file,text\na.png,x\n")
    with pytest.raises(DataError, match="needs a header with 'path' and 'caption'"):
        ImageTextFolder(ImageTextFolder.Config(root=str(tmp_path), captions="bad.csv"))


class _Towers(torch.nn.Module):
    """A stand-in image-text model: text embedding = a fixed random vector per caption."""

    def encode_text(self, texts):
        rows = [torch.randn(8, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        z = torch.stack(rows)
        return z / z.norm(dim=-1, keepdim=True)


def test_prompt_ensembling_matches_a_direct_computation():
    m = _Towers()
    templates = ["a photo of a {}.", "art of the {}."]
    emb = class_embeddings(m, ["cat", "dog"], templates)
    for k, name in enumerate(["cat", "dog"]):
        z = m.encode_text([t.format(name) for t in templates]).mean(0)
        assert torch.allclose(emb[k], z / z.norm(), atol=1e-6)
    single = class_embeddings(m, ["cat"], templates, ensemble=False)
    assert torch.allclose(single[0], m.encode_text(["a photo of a cat."])[0], atol=1e-6)
