"""Giving each public name one path: the namespace that documents it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any


def publish(namespace: str, scope: dict[str, Any], names: Iterable[str]) -> None:
    """Make ``names`` in ``scope`` report ``namespace`` as their module.

    Implementation modules are private (``transferkit._finetuner``); a class or function shows
    up in reprs, tracebacks, pickles and the docs under the path users import it from.
    """
    for name in names:
        value = scope[name]
        if isinstance(value, type) or callable(value):
            with contextlib.suppress(AttributeError, TypeError):  # builtins and C types keep their own
                value.__module__ = namespace
