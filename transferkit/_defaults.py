"""The library's default values, in a module that imports nothing.

The ``transferkit`` command shows these in its ``--help`` and checks its arguments against them
before TensorFlow is imported (importing it takes seconds), so they cannot live only in the
modules that use them, which all import TensorFlow. Those modules are to take their defaults
from here; a test checks that the public objects that hold them (``HEAD_PHASE``,
``PipelineSettings``, ``search``'s signature …) say the same.
"""

from __future__ import annotations

# FineTuner
DEFAULT_BACKBONE = "mobilenet_v2"
REFIT_MAX_IMAGES = 2000  # refit="auto" trains again on all images up to this many (docs/benchmarks.md)

# the two default phases (HEAD_PHASE, FINE_TUNE_PHASE)
HEAD_EPOCHS = 50
HEAD_LEARNING_RATE = 1e-3
HEAD_COPIES = 5  # Phase.heads of the head phase
SOLVE_MAX_IMAGES = 2000  # the head phase's solve="auto" solves the head up to this many training images
FINE_TUNE_EPOCHS = 10
FINE_TUNE_LEARNING_RATE = 1e-4
FINE_TUNE_UNFREEZE_BLOCKS = 2

# PipelineSettings
BATCH_SIZE = 32
VALIDATION_SPLIT = 0.2
SEED = 0

# multi-worker training: seconds a task waits for the rest of its cluster (to start, or at the
# points where the tasks meet outside training) before it stops
CLUSTER_TIMEOUT = 300.0

# search
TUNERS = ("random", "bayesian", "hyperband")
MAX_TRIALS = 20
SEARCH_EPOCHS = 10
WORKER_TIMEOUT = 120.0  # seconds without word from a worker before the chief fails its trial

# predictions and exports
TOP_K = 3
EXPORT_FORMATS = ("saved_model", "tflite", "onnx", "hub")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int8-mixed")

# the demo
DEMO_PER_CLASS = 50
DEMO_IMAGE_SIZE = 96
DEMO_SEED = 0

# transferkit review: cosine similarity of two images' pooled features from which they are a duplicate
# pair (measured on MobileNet v1 features of stamps5: see transferkit/_review/_duplicates.py)
DUPLICATE_THRESHOLD = 0.90
# transferkit review: an image's label is flagged when the out-of-fold probability of its given label is
# below this share of its class's threshold (the mean of that probability over the class). Chosen on
# planted flips in Fashion-MNIST subsets and stamps5 (32 draws), checked on 32 other draws: see
# docs/review.md
LABEL_ISSUE_SHARE = 0.3
# transferkit review --against: a pair across the two folders is also a leak from this much below the
# duplicate threshold when the two images are each other's nearest neighbour across the folders and the
# other folder's image is at least LEAK_GAP closer to it than to any other image of the data (measured on
# planted copies in Fashion-MNIST and stamps5: see transferkit/_review/_duplicates.py)
LEAK_MARGIN = 0.10
LEAK_GAP = 0.04
