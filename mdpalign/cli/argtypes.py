"""argparse ``type=`` validators shared by the ``mdpalign`` sub-commands (clear messages, no tracebacks)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from mdpalign.envs.frozen_lake import NAMED_MAPS


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def lake_map_parser(*extra_names: str) -> Callable[[str], "str | list[str]"]:
    """The one ``--map`` parser: a ``type=`` for a Frozen Lake map given as one of gymnasium's names
    (``NAMED_MAPS``), one of ``extra_names`` (e.g. the bench's ``"two-path"``), or rows over S, F, H, G separated
    by commas (``SFFF,FHFH,FFFH,HFFG``). Returns the name, or the list of rows."""
    names = (*extra_names, *NAMED_MAPS)

    def lake_map(text: str) -> str | list[str]:
        text = text.strip()
        if text in names:
            return text
        rows = [row.strip() for row in text.split(",")]
        if text and all(row and set(row) <= set("SFHG") for row in rows):
            return rows
        raise argparse.ArgumentTypeError(
            f"--map must be {', '.join(repr(n) for n in names)} or comma-separated rows over S,F,H,G "
            f"(e.g. SFFF,FHFH,FFFH,HFFG); got {text!r}")

    return lake_map
