"""MILAN for mimkit: language-aligned teacher features, semantic-aware masking, prompting decoder."""
from .decoder import PromptingBlock, PromptingDecoder
from .model import MILAN, milan_loss
from .teachers import CLIPTeacher, FLIPImageTeacher

__all__ = ["CLIPTeacher", "FLIPImageTeacher", "MILAN", "PromptingBlock", "PromptingDecoder", "milan_loss"]
