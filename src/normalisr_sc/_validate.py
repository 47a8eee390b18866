"""Checks of public parameters: each raises a ValueError naming the parameter and what it accepts.

Every public function validates its parameters with these before reading or changing
anything, so that a wrong type or value never reaches the user as numpy's or pandas'
words.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal, NoReturn, overload

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence


def _fail(name: str, accepted: str, value: Any) -> NoReturn:
    msg = f"`{name}` must be {accepted}, got {value!r}."
    raise ValueError(msg)


def check_bool(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool | np.bool_):
        _fail(name, "True or False" + (" or None" if allow_none else ""), value)


@overload
def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = ...,
    maximum: int | None = ...,
    allow_none: Literal[False] = ...,
) -> int: ...
@overload
def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = ...,
    maximum: int | None = ...,
    allow_none: bool,
) -> int | None: ...
def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """Return ``value`` as an int, refusing bools, floats with a fraction and strings."""
    if value is None and allow_none:
        return None
    accepted = _range_text("an integer", minimum, maximum, allow_none)
    is_integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool | np.bool_) or not is_integral:
        _fail(name, accepted, value)
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        _fail(name, accepted, value)
    return number


@overload
def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    min_open: bool = ...,
    max_open: bool = ...,
    allow_none: Literal[False] = ...,
) -> float: ...
@overload
def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = ...,
    maximum: float | None = ...,
    min_open: bool = ...,
    max_open: bool = ...,
    allow_none: bool,
) -> float | None: ...
def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Return ``value`` as a finite float within the bounds (open or closed)."""
    if value is None and allow_none:
        return None
    accepted = _range_text("a finite number", minimum, maximum, allow_none, min_open, max_open)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        _fail(name, accepted, value)
    number = float(value)
    if not np.isfinite(number):
        _fail(name, accepted, value)
    if minimum is not None and (number < minimum or (min_open and number == minimum)):
        _fail(name, accepted, value)
    if maximum is not None and (number > maximum or (max_open and number == maximum)):
        _fail(name, accepted, value)
    return number


def _range_text(
    kind: str,
    minimum: float | None,
    maximum: float | None,
    allow_none: bool,
    min_open: bool = False,
    max_open: bool = False,
) -> str:
    if minimum is not None and maximum is not None:
        left, right = "(" if min_open else "[", ")" if max_open else "]"
        text = f"{kind} in {left}{minimum}, {maximum}{right}"
    elif minimum is not None:
        text = f"{kind} {'>' if min_open else '>='} {minimum}"
    elif maximum is not None:
        text = f"{kind} {'<' if max_open else '<='} {maximum}"
    else:
        text = kind
    return text + (" or None" if allow_none else "")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    if not isinstance(value, str | type(None) | numbers.Number) or value not in choices:
        _fail(name, f"one of {list(choices)}", value)


def check_str(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        _fail(name, "a non-empty string" + (" or None" if allow_none else ""), value)


def as_names(name: str, value: Any, *, allow_none: bool = True) -> list[str]:
    """Return a string or a sequence of strings as a list of unique strings (``None``: empty)."""
    if value is None and allow_none:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes | numbers.Number | bool) or not hasattr(value, "__iter__"):
        _fail(name, "a string or a list of strings", value)
    names = list(value)
    if not all(isinstance(v, str | numbers.Number) and not isinstance(v, bool) for v in names):
        _fail(name, "a string or a list of strings", value)
    names = [str(v) for v in names]
    duplicated = sorted(n for n, times in Counter(names).items() if times > 1)
    if duplicated:
        msg = f"`{name}` names {duplicated} more than once; give each name once."
        raise ValueError(msg)
    return names


def check_keys(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Check a mapping whose keys are all among ``allowed`` (e.g. keyword arguments passed on)."""
    if not hasattr(value, "keys"):
        _fail(name, f"a mapping with keys among {list(allowed)}", value)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        msg = f"`{name}` has unknown key(s) {unknown}; accepted keys: {list(allowed)}."
        raise ValueError(msg)
