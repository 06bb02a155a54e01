"""Corrupted test sets (Hendrycks & Dietterich's 15 corruptions x 5 severities) for mimkit."""
from .corruptions import CORRUPTIONS, corrupt
from .datasets import Corrupted, FashionMNISTC, image_seeds
from .names import FAMILIES, SEVERITIES, check_corruption, check_severity, parse_corruptions, parse_severities
from .protocol import accuracy, draw_grid, format_table, shifted_dataset, sweep, test_spec

__all__ = ["CORRUPTIONS", "FAMILIES", "SEVERITIES", "corrupt", "Corrupted", "FashionMNISTC", "image_seeds",
           "check_corruption", "check_severity", "parse_corruptions", "parse_severities", "accuracy", "draw_grid",
           "format_table", "shifted_dataset", "sweep", "test_spec"]
