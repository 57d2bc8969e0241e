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
"""

from transferkit import backbones as backbones  # registers the keras.applications backbones
from transferkit import hub as hub  # registers the Hub resolver (URLs and SavedModel folders)
from transferkit._calibration import Calibration
from transferkit._errors import (
    BackboneExistsError,
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
from transferkit._features import FeatureCache
from transferkit._finetuner import FineTuner
from transferkit._freezing import FreezeAll, FreezePolicy, FreezeSummary, UnfreezeAll, UnfreezeFrom, UnfreezeTop
from transferkit._heads import Head
from transferkit._lr_find import LearningRateSweep
from transferkit._metrics import Evaluation, Predictions
from transferkit._model import build_model
from transferkit._phases import FINE_TUNE_PHASE, HEAD_PHASE, Phase
from transferkit._public import publish as _publish
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
    "RunInUseError",
    "SearchResult",
    "SkippedFilesWarning",
    "TrainingDivergedError",
    "TransferkitError",
    "UnfreezeAll",
    "UnfreezeFrom",
    "UnfreezeTop",
    "UnknownBackboneError",
    "WeightsUnavailableError",
    "__version__",
    "build_model",
    "from_arrays",
    "from_files",
    "get_backbone",
    "list_backbones",
    "load_csv",
    "load_folder",
    "read_csv",
    "register_backbone",
    "scan_folder",
    "search",
    "stratified_split",
]

_publish(__name__, globals(), __all__)
