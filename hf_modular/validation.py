"""Numeric options checked where they enter (the API's functions and the CLI's parser), with a message that names
the option and the range it takes, instead of a crash deep inside a pass."""

from __future__ import annotations

import argparse
import math
from numbers import Real


def check_number(
    name: str, value: object, *, minimum: float | None = None, above: float | None = None, integer: bool = False
) -> None:
    """Raise ValueError unless `value` is a finite number (an int when `integer`) >= `minimum` / > `above`."""
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if above is not None:
        bounds.append(f"> {above}")
    expected = " ".join(["an integer" if integer else "a number", " and ".join(bounds)]).strip()
    valid = isinstance(value, int if integer else Real) and not isinstance(value, bool)
    valid = valid and math.isfinite(value)  # type: ignore[arg-type]
    valid = valid and (minimum is None or value >= minimum) and (above is None or value > above)  # type: ignore[operator]
    if not valid:
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def cli_number(*, minimum: float | None = None, above: float | None = None, integer: bool = False):
    """An argparse `type` that parses a number and checks its range, so the CLI refuses it before any work."""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if integer else 'a number'}, got {text!r}"
            ) from error
        try:
            check_number("the value", value, minimum=minimum, above=above, integer=integer)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).replace("the value must be", "must be")) from error
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse
