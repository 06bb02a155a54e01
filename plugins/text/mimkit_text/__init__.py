"""mimkit-text: what language-assisted methods (FLIP, MILAN) share — text towers, a BERT
WordPiece tokenizer, caption datasets and zero-shot classification."""
from .data import CaptionedFashionMNIST, ImageTextFolder, NotoEmoji, TuxPaintStamps
from .tokenizer import WordPieceTokenizer, bert_vocab_path, minilm_path
from .towers import MiniLMTower, TextTransformer, build_text_tower
from .zeroshot import ZeroShot, class_embeddings

__all__ = [
    "CaptionedFashionMNIST", "ImageTextFolder", "NotoEmoji", "TuxPaintStamps", "WordPieceTokenizer",
    "bert_vocab_path", "minilm_path", "MiniLMTower", "TextTransformer", "build_text_tower", "ZeroShot",
    "class_embeddings",
]
