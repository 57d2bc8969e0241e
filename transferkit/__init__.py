"""transferkit: transfer learning for images with Keras 3 on TensorFlow.

Example:
    >>> import transferkit as tk
    >>> data = tk.load_folder("photos/", image_size=224)
    >>> tuner = tk.FineTuner("mobilenet_v2", weights="imagenet")
    >>> tuner.fit(data)
    >>> tuner.evaluate(data).accuracy
"""

from transferkit.backbones import (
    BackboneSpec,
    GroupRule,
    build_backbone,
    get_backbone,
    layer_groups,
    list_backbones,
    register_backbone,
)
from transferkit.data import (
    Augment,
    ImageData,
    ImageFiles,
    SkippedFilesWarning,
    from_arrays,
    from_files,
    load_csv,
    load_folder,
    make_dataset,
    read_csv,
    scan_folder,
    stratified_split,
)
from transferkit.errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    NotFittedError,
    TransferkitError,
    UnknownBackboneError,
    WeightsUnavailableError,
)
from transferkit.finetuner import FINE_TUNE_PHASE, HEAD_PHASE, Evaluation, FineTuner, Phase, Predictions
from transferkit.freezing import FreezeAll, FreezePolicy, UnfreezeAll, UnfreezeFrom, UnfreezeTop
from transferkit.heads import Head
from transferkit.models import build_model
from transferkit.preprocessing import Preprocess

__version__ = "0.1.0"

__all__ = [
    "FINE_TUNE_PHASE",
    "HEAD_PHASE",
    "Augment",
    "BackboneSpec",
    "ConfigError",
    "DataError",
    "Evaluation",
    "FineTuner",
    "FreezeAll",
    "FreezePolicy",
    "GroupRule",
    "Head",
    "ImageData",
    "ImageFiles",
    "MissingDependencyError",
    "NotFittedError",
    "Phase",
    "Predictions",
    "Preprocess",
    "SkippedFilesWarning",
    "TransferkitError",
    "UnfreezeAll",
    "UnfreezeFrom",
    "UnfreezeTop",
    "UnknownBackboneError",
    "WeightsUnavailableError",
    "__version__",
    "build_backbone",
    "build_model",
    "from_arrays",
    "from_files",
    "get_backbone",
    "layer_groups",
    "list_backbones",
    "load_csv",
    "load_folder",
    "make_dataset",
    "read_csv",
    "register_backbone",
    "scan_folder",
    "stratified_split",
]
