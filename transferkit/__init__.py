"""transferkit: transfer learning for images with Keras 3 on TensorFlow.

Everything a user needs is importable from here; the implementation modules are private
(``transferkit._finetuner`` …). Six public namespaces hold the more specialised tools:
:mod:`transferkit.backbones` (writing your own backbone specs), :mod:`transferkit.data`
(decoding and pipelines), :mod:`transferkit.hub` (TensorFlow Hub modules),
:mod:`transferkit.report` (plots), :mod:`transferkit.imagenet` (ImageNet predictions) and
:mod:`transferkit.export` (verified SavedModel, TFLite and ONNX exports).

Example:
    >>> import transferkit as tk
    >>> data = tk.load_folder("photos/", image_size=224)
    >>> tuner = tk.FineTuner("mobilenet_v2", weights="imagenet")
    >>> tuner.fit(data)
    >>> tuner.evaluate(data).accuracy

TensorFlow is imported the first time a name that needs it is used (``import transferkit`` alone
is quick, and so is the ``transferkit`` command's ``--help``): then every module below is imported
at once, the backbones and the Hub resolver are registered, and each public name gets its
documented path, exactly as if they had all been imported here.
"""

import importlib as _importlib
import typing as _typing
from typing import Any as _Any

from transferkit._errors import (
    BackboneExistsError,
    ClusterError,
    ConfigError,
    DataError,
    MissingDependencyError,
    NotFittedError,
    RunInUseError,
    TrainingDivergedError,
    TransferkitError,
    UnknownBackboneError,
    WeightsUnavailableError,
)
from transferkit._public import publish as _publish

if _typing.TYPE_CHECKING:
    from transferkit import backbones as backbones
    from transferkit import hub as hub
    from transferkit._calibration import Calibration
    from transferkit._features import FeatureCache
    from transferkit._finetuner import FineTuner
    from transferkit._freezing import FreezeAll, FreezePolicy, FreezeSummary, UnfreezeAll, UnfreezeFrom, UnfreezeTop
    from transferkit._heads import Head
    from transferkit._lr_find import LearningRateSweep
    from transferkit._metrics import Evaluation, Predictions
    from transferkit._model import build_model
    from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE, Phase
    from transferkit._review import Review, apply_plan, plan_decisions, review, undo_decisions
    from transferkit._run import TrainedRun
    from transferkit._run_folder import RunFolder, train_run
    from transferkit._selection import BestEpoch, Refit
    from transferkit._tuning import SearchResult, search
    from transferkit.backbones._registry import BackboneSpec, get_backbone, list_backbones, register_backbone
    from transferkit.data._augment import Augment
    from transferkit.data._loaders import ImageData, from_arrays, from_files, load_csv, load_folder
    from transferkit.data._pipelines import PipelineSettings
    from transferkit.data._sources import ImageFiles, SkippedFilesWarning, read_csv, scan_folder
    from transferkit.data._splits import stratified_split

__version__ = "0.1.0"

__all__ = [
    "FINE_TUNE_PHASE",
    "HEAD_PHASE",
    "Augment",
    "BackboneExistsError",
    "BackboneSpec",
    "BestEpoch",
    "Calibration",
    "ClusterError",
    "ConfigError",
    "DataError",
    "Evaluation",
    "FeatureCache",
    "FineTuner",
    "FreezeAll",
    "FreezePolicy",
    "FreezeSummary",
    "Head",
    "ImageData",
    "ImageFiles",
    "LearningRateSweep",
    "MissingDependencyError",
    "NotFittedError",
    "Phase",
    "PipelineSettings",
    "Predictions",
    "Refit",
    "Review",
    "RunFolder",
    "RunInUseError",
    "SearchResult",
    "SkippedFilesWarning",
    "TrainedRun",
    "TrainingDivergedError",
    "TransferkitError",
    "UnfreezeAll",
    "UnfreezeFrom",
    "UnfreezeTop",
    "UnknownBackboneError",
    "WeightsUnavailableError",
    "__version__",
    "apply_plan",
    "build_model",
    "from_arrays",
    "from_files",
    "get_backbone",
    "list_backbones",
    "load_csv",
    "load_folder",
    "plan_decisions",
    "read_csv",
    "register_backbone",
    "review",
    "scan_folder",
    "search",
    "stratified_split",
    "train_run",
    "undo_decisions",
]

# Where each name that needs TensorFlow comes from: the same imports as the TYPE_CHECKING block
# above (a test checks that they agree), made on first use. The two namespaces come first, as
# importing them registers the keras.applications backbones and the Hub resolver.
_NAMESPACES = ("backbones", "hub")
_LAZY = {
    "transferkit._calibration": ("Calibration",),
    "transferkit._features": ("FeatureCache",),
    "transferkit._finetuner": ("FineTuner",),
    "transferkit._freezing": ("FreezeAll", "FreezePolicy", "FreezeSummary", "UnfreezeAll", "UnfreezeFrom",
                              "UnfreezeTop"),
    "transferkit._heads": ("Head",),
    "transferkit._lr_find": ("LearningRateSweep",),
    "transferkit._metrics": ("Evaluation", "Predictions"),
    "transferkit._model": ("build_model",),
    "transferkit._phases": ("FINE_TUNE_PHASE", "HEAD_PHASE", "Phase"),
    "transferkit._review": ("Review", "apply_plan", "plan_decisions", "review", "undo_decisions"),
    "transferkit._run": ("TrainedRun",),
    "transferkit._run_folder": ("RunFolder", "train_run"),
    "transferkit._selection": ("BestEpoch", "Refit"),
    "transferkit._tuning": ("SearchResult", "search"),
    "transferkit.backbones._registry": ("BackboneSpec", "get_backbone", "list_backbones", "register_backbone"),
    "transferkit.data._augment": ("Augment",),
    "transferkit.data._loaders": ("ImageData", "from_arrays", "from_files", "load_csv", "load_folder"),
    "transferkit.data._pipelines": ("PipelineSettings",),
    "transferkit.data._sources": ("ImageFiles", "SkippedFilesWarning", "read_csv", "scan_folder"),
    "transferkit.data._splits": ("stratified_split",),
}
_LAZY_NAMES = {name for names in _LAZY.values() for name in names} | set(_NAMESPACES)


_loading = False


def _import_everything() -> None:
    """Import every module behind the public names, bind the names here and publish them."""
    global _loading
    _loading = True
    try:
        scope = globals()
        for namespace in _NAMESPACES:
            scope[namespace] = _importlib.import_module(f"{__name__}.{namespace}")
        for module, names in _LAZY.items():
            loaded = _importlib.import_module(module)
            scope.update({name: getattr(loaded, name) for name in names})
        _publish(__name__, scope, __all__)
    finally:
        _loading = False


if not _typing.TYPE_CHECKING:  # type checkers read the imports above instead

    def __getattr__(name: str) -> _Any:
        # PEP 562: Python calls this only for a name not bound yet, so only the first use of a public
        # name gets here; a module imported meanwhile that asks for a namespace gets just that
        if _loading and name in _NAMESPACES:
            return _importlib.import_module(f"{__name__}.{name}")
        if name in _LAZY_NAMES:
            _import_everything()
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | _LAZY_NAMES)


_publish(__name__, globals(), [name for name in __all__ if name not in _LAZY_NAMES])
