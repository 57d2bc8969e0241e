"""Review a dataset: the images that look mislabelled, duplicated, leaked or odd, and one page to fix them.

:func:`review` finds them (``transferkit review DATA --out DIR`` on the command line) and writes
``label_issues.csv``, ``duplicates.csv``, ``outliers.csv`` and ``review.html``; a person marks each
item keep / relabel / remove on the page and downloads ``decisions.csv``, which
:func:`plan_decisions` checks and :func:`apply_plan` carries out (``--apply decisions.csv --yes``);
:func:`undo_decisions` puts everything back. Nothing is ever deleted: removed images go to a quarantine
folder beside the data.

Example:
    >>> result = review("photos/", out="review/")
    >>> print(result.summary())
    >>> apply_plan(plan_decisions("review/decisions.csv", "photos/"))
"""

from transferkit._review._apply import apply_plan, undo_decisions
from transferkit._review._changes import Plan
from transferkit._review._find import Review, review
from transferkit._review._plan import plan_decisions

__all__ = ["Plan", "Review", "apply_plan", "plan_decisions", "review", "undo_decisions"]
