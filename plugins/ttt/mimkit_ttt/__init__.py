"""TTT (Sun et al., ICML 2020) for mimkit: the Y-shaped ResNet, joint training, test-time training."""
from .adapt import SETTINGS, AdaptConfig, TestTimeTrainer, random_crop_flip, rotation_accuracy, run_stream
from .model import TTT, ResNetCifar, RotationHead, rotate, rotate_batch

__all__ = ["SETTINGS", "AdaptConfig", "TestTimeTrainer", "random_crop_flip", "rotation_accuracy", "run_stream",
           "TTT", "ResNetCifar", "RotationHead", "rotate", "rotate_batch"]
