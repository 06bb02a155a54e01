"""Parsing and checking corruption names and severities (errors list what is allowed)."""
from __future__ import annotations

from typing import Any

from mimkit.plugin_api import ConfigError

#: The 15 corruptions of Hendrycks & Dietterich by family, in the benchmark's order.
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
SEVERITIES = (1, 2, 3, 4, 5)
ALLOWED_NAMES = tuple(n for names in FAMILIES.values() for n in names)


def check_corruption(name: Any, key: str = "corruption") -> str:
    if name not in ALLOWED_NAMES:
        raise ConfigError(f"{key}: unknown corruption {name!r}; allowed: {', '.join(ALLOWED_NAMES)}")
    return str(name)


def check_severity(severity: Any, key: str = "severity") -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigError(f"{key}: severity must be one of {list(SEVERITIES)}, got {severity!r}")
    return int(severity)


def parse_corruptions(value: Any, key: str = "corruptions") -> list[str]:
    """``all``, a family (noise, blur, weather, digital), one name, a comma-separated string or a
    list of those -> the corruption names, in the benchmark's order, without repeats."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    chosen: list[str] = []
    for item in items:
        item = str(item).strip()
        if item == "all":
            names = list(ALLOWED_NAMES)
        elif item in FAMILIES:
            names = list(FAMILIES[item])
        elif item in ALLOWED_NAMES:
            names = [item]
        else:
            raise ConfigError(f"{key}: unknown corruption {item!r}; allowed: all, {', '.join(FAMILIES)}, "
                              f"{', '.join(ALLOWED_NAMES)}")
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise ConfigError(f"{key}: no corruption chosen; allowed: all, {', '.join(FAMILIES)}, {', '.join(ALLOWED_NAMES)}")
    return [n for n in ALLOWED_NAMES if n in chosen]


def parse_severities(value: Any, key: str = "severity") -> list[int]:
    """``3``, ``"1-5"``, ``"1,3,5"`` or a list -> sorted severities, each checked."""
    if isinstance(value, str):
        out: list[int] = []
        for part in value.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(p) for p in part.split("-", 1))
                    if lo > hi:
                        raise ValueError
                    out += list(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ConfigError(f"{key}: cannot read {value!r}; give severities in {list(SEVERITIES)} "
                                  "as 3, 1-5 or 1,3,5") from None
    elif isinstance(value, (list, tuple)):
        out = list(value)
    else:
        out = [value]
    return sorted({check_severity(v, key) for v in out})
