"""Train's options as the library's recipe: the two phases and the FineTuner's keywords."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from transferkit.cli._options import UsageError, flag, number, refit_choice

if TYPE_CHECKING:
    from transferkit import Phase


def phases_from_options(options: dict[str, Any]) -> tuple[Phase, Phase | None]:
    """The head phase and the fine-tune phase (None: skipped) that train's options ask for.

    Each option left at None keeps the default phase's value (``HEAD_PHASE``,
    ``FINE_TUNE_PHASE``). Giving ``epochs``, ``learning_rate`` or ``heads`` describes a head
    trained with an optimizer, so the head phase then trains instead of solving the head, unless
    ``solve_head`` says otherwise. A bad value raises (a ``UsageError``, or the ``ConfigError`` of
    the phase that would hold it) before any image is read.

    Args:
        options: Train's options, as :func:`transferkit.cli._options.train_options` merges them:
            ``epochs``, ``learning_rate``, ``fine_tune_epochs``, ``fine_tune_learning_rate``,
            ``unfreeze_blocks``, ``label_smoothing``, ``mix``, ``lr_decay``, ``gradual``,
            ``heads`` and ``solve_head``.

    Returns:
        ``(head_phase, fine_tune_phase)``; ``fine_tune_phase`` is None when it runs no epochs.

    Example:
        >>> head, fine = phases_from_options({**train_defaults(), "epochs": 3, "fine_tune_epochs": 0})
        >>> head.epochs, head.solve, fine
        (3, False, None)
    """
    import transferkit as tk

    o = options
    head = tk.HEAD_PHASE
    if o["epochs"] is not None:
        head = dataclasses.replace(head, epochs=o["epochs"])
    if o["learning_rate"] is not None:
        head = dataclasses.replace(head, learning_rate=o["learning_rate"])
    fine = tk.FINE_TUNE_PHASE
    if o["fine_tune_epochs"] is not None:
        fine = dataclasses.replace(fine, epochs=o["fine_tune_epochs"])
    if o["fine_tune_learning_rate"] is not None:
        fine = dataclasses.replace(fine, learning_rate=o["fine_tune_learning_rate"])
    if o["unfreeze_blocks"] is not None:
        fine = dataclasses.replace(fine, policy=tk.UnfreezeTop(o["unfreeze_blocks"]))
    if o["label_smoothing"] is not None:
        head = dataclasses.replace(head, label_smoothing=number(o, "label_smoothing"))
        fine = dataclasses.replace(fine, label_smoothing=number(o, "label_smoothing"))
    if o["mix"] is not None:  # the fine-tune phase only: the head phase keeps training on cached features
        fine = dataclasses.replace(fine, mix=str(o["mix"]))
    if o["lr_decay"] is not None:
        fine = dataclasses.replace(fine, lr_decay=number(o, "lr_decay"))
    if flag(o, "gradual"):
        fine = dataclasses.replace(fine, gradual=True)
    if o["heads"] is not None:
        head = dataclasses.replace(head, heads=o["heads"])
    if o["solve_head"] is None and any(o[key] is not None for key in ("epochs", "learning_rate", "heads")):
        head = dataclasses.replace(head, solve=False)  # asked for an optimizer's head phase: train it
    if o["solve_head"] is not None:
        if o["solve_head"] not in (True, False, "auto") or not isinstance(o["solve_head"], (bool, str)):
            raise UsageError(f'solve_head = {o["solve_head"]!r}: expected true, false or "auto".')
        head = dataclasses.replace(head, solve=o["solve_head"])
    return head, fine if fine.epochs else None


def finetuner_options(options: dict[str, Any]) -> dict[str, Any]:
    """FineTuner's keywords for train's true/false options and ``refit``."""
    return {
        "class_weight": "balanced" if flag(options, "balanced") else None,
        "keep_best": not flag(options, "keep_last"),
        "refit": refit_choice(options["refit"]),
        "temperature_scaling": flag(options, "calibrate"),
        "mixed_precision": flag(options, "mixed_precision"),
        "jit_compile": True if flag(options, "xla") else "auto",
    }
