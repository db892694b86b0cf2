"""argparse ``type=`` validators shared by the ``mdpalign`` sub-commands (clear messages, no tracebacks)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from mdpalign.envs.frozen_lake import NAMED_MAPS


def _number_type(convert: Callable, accept: Callable, what: str, rule: str) -> Callable:
    """An argparse ``type=``: ``convert(text)`` or "expected <what>", then ``accept(value)`` or "must <rule>"."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must {rule}, got {text.strip()}")
        return value

    return parse


positive_int = _number_type(int, lambda v: v > 0, "a positive integer", "be a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "a non-negative integer", "be a non-negative integer")
positive_float = _number_type(float, lambda v: v > 0 and math.isfinite(v), "a positive number",
                              "be a positive finite number")
unit_interval = _number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]", "lie in [0, 1]")


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
