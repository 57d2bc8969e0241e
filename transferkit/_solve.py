"""A linear head solved rather than trained: L2-regularised softmax regression on cached features.

With the backbone frozen, a linear head on pooled features is a convex problem. On few images an
optimizer run for a fixed number of epochs stops far from its solution (a few hundred Adam steps
on 130 photos), while the solution itself, with its regularisation chosen by cross-validation, is
the classifier the linear-probe literature measures. This module computes it:

- the loss is the mean (optionally sample-weighted) cross-entropy plus ``||W||² / (2 C n)``, the
  scale scikit-learn's ``LogisticRegression(C=…)`` uses, with an unpenalised bias;
- ``C`` is chosen from a grid by the mean held-out log loss over stratified folds, then the head is
  solved on every image with it;
- the solver is L-BFGS in a rotated, rescaled basis: the centred features' principal axes, each
  scaled by the inverse square root of its curvature bound. The penalty stays the one on the raw
  weights; only the optimizer's coordinates change, which makes each solve a few hundred
  iterations instead of thousands on raw features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
FOLDS = 5
TOLERANCE = 1e-4  # on the largest gradient entry of the mean loss
CV_TOLERANCE = 1e-3  # the cross-validation's solves: enough to rank the held-out log losses
MAX_ITERATIONS = 1000


@dataclass(frozen=True)
class HeadSolution:
    """The solved head: ``logits = features @ kernel + bias``.

    Attributes:
        kernel: ``(features, classes)`` weights.
        bias: ``(classes,)`` bias.
        c: The inverse regularisation strength chosen (scikit-learn's ``C``).
        cv_log_loss: Mean held-out log loss of each ``C`` tried (empty when too few images per class
            to cross-validate: then ``C`` = 1).
        folds: Folds of the cross-validation (0 when it did not run).
        iterations: L-BFGS iterations, all solves together.
        seconds: Wall time of the whole search and solve.
    """

    kernel: np.ndarray
    bias: np.ndarray
    c: float
    cv_log_loss: dict[float, float] = field(default_factory=dict)
    folds: int = 0
    iterations: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Everything but the weights, JSON-able (metrics.json, the checkpoint)."""
        return {"c": self.c, "cv_log_loss": {str(c): round(v, 5) for c, v in self.cv_log_loss.items()},
                "folds": self.folds, "iterations": self.iterations, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_summary(cls, summary: dict[str, Any], kernel: np.ndarray, bias: np.ndarray) -> HeadSolution:
        """The solution a :meth:`summary` describes, with the weights it gave."""
        return cls(kernel=kernel, bias=bias, c=float(summary["c"]),
                   cv_log_loss={float(c): float(v) for c, v in summary["cv_log_loss"].items()},
                   folds=int(summary["folds"]), iterations=int(summary["iterations"]),
                   seconds=float(summary["seconds"]))


def _lbfgs(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray, *, tolerance: float,
           memory: int = 10) -> tuple[np.ndarray, int]:
    """Minimise a smooth function (``objective(x) -> (value, gradient)``) by L-BFGS with Armijo backtracking."""
    x = start.copy()
    value, grad = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    iteration = 0
    for iteration in range(1, MAX_ITERATIONS + 1):
        if np.max(np.abs(grad)) < tolerance:
            return x, iteration - 1
        q = grad.copy()
        alphas = []
        for s, y, rho in reversed(steps):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if steps:
            s, y, _ = steps[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y, rho), a in zip(steps, reversed(alphas)):
            q += (a - rho * float(y @ q)) * s
        direction = -q
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            direction, slope, steps = -grad, -float(grad @ grad), []
        t = 1.0
        while True:
            candidate = x + t * direction
            new_value, new_grad = objective(candidate)
            if new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-10:
                return x, iteration  # no progress possible along this direction
        s, y = candidate - x, new_grad - grad
        if float(s @ y) > 1e-12:
            steps.append((s, y, 1.0 / float(s @ y)))
            if len(steps) > memory:
                steps.pop(0)
        x, value, grad = candidate, new_value, new_grad
    return x, iteration


class _Problem:
    """Softmax regression on one set of features, in the preconditioned basis."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> None:
        x = features.astype(np.float64)
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        # the principal axes; with fewer images than features only the images' span (the penalty
        # keeps the solution in it), which makes every solve smaller
        if centred.shape[0] < centred.shape[1]:
            left, singular, right = np.linalg.svd(centred, full_matrices=False)
            self.axes, self.variance, self.rotated = right.T, singular ** 2, left * singular
        else:
            variance, self.axes = np.linalg.eigh(centred.T @ centred)
            self.variance = np.maximum(variance, 0.0)
            self.rotated = centred @ self.axes
        self.targets, self.weights = targets, weights / weights.mean()
        self.n, self.dim = self.rotated.shape
        self.classes = targets.shape[1]

    def solve(self, c: float, start: np.ndarray | None = None, *, tolerance: float = TOLERANCE
              ) -> tuple[np.ndarray, int]:
        """The solution for ``c`` as ``(dim*classes + classes,)`` parameters in the rotated basis."""
        n, dim, k = self.n, self.dim, self.classes
        penalty = 1.0 / (c * n)
        scale = 1.0 / np.sqrt(0.25 * self.variance / n + penalty)  # 1/sqrt of each axis' curvature bound
        z = self.rotated * scale
        per_axis = penalty * scale * scale

        def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
            u, bias = p[:dim * k].reshape(dim, k), p[dim * k:]
            logits = z @ u + bias
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            total = exp.sum(axis=1, keepdims=True)
            loss = float((self.weights * (np.log(total[:, 0]) - (logits * self.targets).sum(axis=1))).sum()) / n
            loss += 0.5 * float((per_axis[:, None] * u * u).sum())
            residual = (exp / total - self.targets) * (self.weights[:, None] / n)
            grad_u = z.T @ residual + per_axis[:, None] * u
            return loss, np.concatenate([grad_u.ravel(), residual.sum(axis=0)])

        if start is None:
            p0 = np.zeros(dim * k + k)
        else:  # a solution for another c: the same weights in this c's scaled coordinates
            p0 = np.concatenate([(start[:dim * k].reshape(dim, k) / scale[:, None]).ravel(), start[dim * k:]])
        p, iterations = _lbfgs(objective, p0, tolerance=tolerance)
        a = p[:dim * k].reshape(dim, k) * scale[:, None]
        return np.concatenate([a.ravel(), p[dim * k:]]), iterations

    def head(self, solution: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(kernel, bias)`` on the original features."""
        k = self.classes
        kernel = self.axes @ solution[:self.dim * k].reshape(self.dim, k)
        return kernel, solution[self.dim * k:] - self.mean @ kernel


def _log_loss(kernel: np.ndarray, bias: np.ndarray, features: np.ndarray, targets: np.ndarray,
              weights: np.ndarray) -> float:
    logits = features.astype(np.float64) @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    per_image = np.log(np.exp(logits).sum(axis=1)) - (logits * targets).sum(axis=1)
    return float((weights * per_image).sum() / weights.sum())


def _folds(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A stratified fold number for every image."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        folds[members] = (np.arange(len(members)) + rng.integers(count)) % count
    return folds


def solve_head(features: np.ndarray, labels: np.ndarray, classes: int, *, label_smoothing: float = 0.0,
               sample_weight: np.ndarray | None = None, grid: tuple[float, ...] = C_GRID, folds: int = FOLDS,
               seed: int = 0) -> HeadSolution:
    """Solve a linear softmax head on ``features`` (``(n, dim)``) for integer ``labels``.

    ``C`` is chosen from ``grid`` by stratified ``folds``-fold cross-validation (mean held-out log
    loss, ties to the stronger regularisation), with fewer folds where the rarest class has fewer
    images, and ``C`` = 1 where it has fewer than two.
    """
    started = time.perf_counter()
    labels = np.asarray(labels).astype(int).ravel()
    onehot = np.eye(classes)[labels]
    targets = onehot * (1.0 - label_smoothing) + label_smoothing / classes
    weights = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    present = np.bincount(labels, minlength=classes)
    smallest = int(present[present > 0].min()) if present.any() else 0
    count = min(folds, smallest)
    iterations, scores = 0, {}
    if count >= 2 and len(grid) > 1:
        fold_of = _folds(labels, count, seed)
        totals = np.zeros(len(grid))
        for fold in range(count):
            train, held = fold_of != fold, fold_of == fold
            problem = _Problem(features[train], targets[train], weights[train])
            solution = None
            for i, c in enumerate(sorted(grid)):  # strongest penalty first: each solve starts from the last
                solution, used = problem.solve(c, solution, tolerance=CV_TOLERANCE)
                iterations += used
                totals[i] += _log_loss(*problem.head(solution), features[held], onehot[held], weights[held])
        scores = {c: float(total / count) for c, total in zip(sorted(grid), totals)}
        chosen = min(scores, key=lambda c: (round(scores[c], 6), c))
    else:
        count, chosen = 0, 1.0 if len(grid) != 1 else float(grid[0])
    problem = _Problem(features, targets, weights)
    solution, used = problem.solve(chosen)
    kernel, bias = problem.head(solution)
    return HeadSolution(kernel=kernel.astype(np.float32), bias=bias.astype(np.float32), c=float(chosen),
                        cv_log_loss=scores, folds=count, iterations=iterations + used,
                        seconds=time.perf_counter() - started)
