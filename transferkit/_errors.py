"""One exception tree for every mistake a user can make.

Catch :class:`TransferkitError` to handle them all; each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``FileNotFoundError`` …).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class UnknownBackboneError(TransferkitError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class BackboneExistsError(TransferkitError, ValueError):
    """Registering a backbone under a name that is already taken."""


class WeightsUnavailableError(TransferkitError, RuntimeError):
    """Pretrained weights that cannot be downloaded or loaded."""


class DataError(TransferkitError, ValueError):
    """A dataset that cannot be used as given (missing path, empty class, bad CSV …)."""


class ConfigError(TransferkitError, ValueError):
    """An option with a value outside what it accepts."""


class NotFittedError(TransferkitError, RuntimeError):
    """Asking a FineTuner for predictions before it has a model."""


class MissingDependencyError(TransferkitError, ImportError):
    """An optional dependency that is not installed."""


class RunInUseError(TransferkitError, RuntimeError):
    """A run folder that another process is writing (it holds the folder's lock file)."""


class ClusterError(TransferkitError, RuntimeError):
    """A multi-worker cluster (``TF_CONFIG``) that lost a task, or whose tasks did not all start.

    Its message names the task; running the same command on every task again resumes the run.
    """


def closest(value: str, options: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` options that look like ``value``, best first."""
    options = list(options)
    by_case = {o.lower(): o for o in options}
    return [by_case[m] for m in difflib.get_close_matches(value.lower(), list(by_case), n=n, cutoff=0.5)]


def did_you_mean(value: object, options: Iterable[str], n: int = 3) -> str:
    """`` Did you mean 'a', 'b'?`` for the options that look like ``value``, or ``""``.

    Every "unknown name" message in transferkit ends with this hint, so they all read alike.
    """
    if not isinstance(value, str):
        return ""
    options = list(options)
    near = closest(value, options, n=n) or closest(value.replace("_", ""), options, n=n)
    return f" Did you mean {', '.join(repr(o) for o in near)}?" if near else ""


def check_choice(argument: str, value: object, choices: Iterable[str]) -> str:
    """Validate an option string, naming the argument and the valid values when it is wrong."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices, n=1)
    raise ConfigError(
        f"Expected {argument} to be one of {', '.join(repr(c) for c in choices)}. "
        f"Received: {argument}={value!r}.{hint}"
    )


class TrainingDivergedError(TransferkitError, RuntimeError):
    """Training whose loss stopped being finite before any weights worth keeping existed."""
