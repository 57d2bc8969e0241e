"""What the command lets through to the terminal from TensorFlow, Python's warnings and the library.

By default a user sees the command's own lines, the library's warnings as ``warning: …`` and the
skipped image files; TensorFlow's start-up chatter (oneDNN, CUDA drivers, CPU instructions) and
its log lines below errors are hidden, and so are other Python warnings. ``--verbose`` shows them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# TensorFlow's C++ log lines ("I0000 00:00:1796518065.331219 3814 port.cc:153] …"), the notice
# that Abseil prints before its logging is set up, and the one LiteRT prints for every interpreter
_NATIVE_LOG_LINE = re.compile(r"^(?:[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |WARNING: All log messages before "
                              r"absl::InitializeLog\(\) is called are written to STDERR|"
                              r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.|"
                              r"fully_quantize: \d+, inference_type: )")


def quiet_tensorflow() -> None:
    """Import TensorFlow with its log lines below errors hidden, and keep its Python loggers to errors.

    ``TF_CPP_MIN_LOG_LEVEL`` must be set before TensorFlow is imported (a value the user set is
    kept). It does not reach the lines TensorFlow's libraries print while they load, before
    their logging is set up: those are filtered out of what the import writes to the process's
    standard error; anything else it writes goes through.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with native_lines_filtered():
            import tensorflow  # noqa: F401
    for name in ("tensorflow", "absl"):  # absl's Python logging carries some of TensorFlow's warnings
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_lines_filtered() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (C++ code writes there directly), then pass on the rest."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to redirect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _NATIVE_LOG_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def terminal_output(*, verbose: bool) -> Iterator[None]:
    """The library's warnings as one ``warning:`` line each; other Python warnings only with ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)  # the library's warnings (a diverged phase, …) as one line each
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    library_log = logging.getLogger("transferkit")
    library_log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(warnings.showwarning, verbose=verbose)
            yield
    finally:
        library_log.removeHandler(handler)


def _warning_printer(show: Callable[..., None], *, verbose: bool) -> Callable[..., None]:
    """``warnings.showwarning`` for the command: skipped files as ``warning: …``, the rest by ``show`` if verbose."""

    def printer(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        from transferkit import SkippedFilesWarning

        if issubclass(category, SkippedFilesWarning):
            print(f"warning: {message}", file=sys.stderr)
        elif verbose:
            show(message, category, *args, **kwargs)

    return printer
