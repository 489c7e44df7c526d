"""Checks of plain input values, each raising ``ValueError`` that names the field.

The policy core validates its inputs where they are built (a request, a step
limit, a step-time model, a PAB query) so that a bad value fails loudly with
its name instead of producing a wrong plan; the fit (``node.fit``) checks its
samples the same way. Standard library only, like the rest of ``node.core``.

A *number* is an ``int``, a ``float`` or another ``numbers.Real`` (a NumPy
float, say), never a ``bool``; an *integer* is an ``int``, never a ``bool``.
"""

from __future__ import annotations

import math
from numbers import Real


def _is_number(value: object) -> bool:
    cls = type(value)
    if cls is float or cls is int:  # the common case, without the ABC check
        return True
    return isinstance(value, Real) and not isinstance(value, bool)


def check_finite(name: str, value: float) -> None:
    """``value`` is a finite number; raises ``ValueError`` naming ``name`` otherwise."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """``value`` is a finite number > 0; raises ``ValueError`` naming ``name`` otherwise."""
    check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_at_least(name: str, value: float, minimum: float) -> None:
    """``value`` is a finite number >= ``minimum``; raises ``ValueError`` naming ``name`` otherwise."""
    check_finite(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_int(name: str, value: int, *, minimum: int) -> None:
    """``value`` is an integer >= ``minimum``; raises ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
