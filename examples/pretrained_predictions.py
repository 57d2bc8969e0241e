"""Classify ten photos with a pretrained ImageNet network and save a 2×5 grid of the results.

    python examples/pretrained_predictions.py                 # scikit-image's sample photos
    python examples/pretrained_predictions.py PHOTO_DIR       # the first ten images of a folder
    python examples/pretrained_predictions.py --hub HANDLE    # a Hub ImageNet classifier (URL or folder)
    python examples/pretrained_predictions.py --backbone efficientnet_b0             # any registered backbone
    python examples/pretrained_predictions.py --backbone efficientnet_lite0_ra_imagenet  # a KerasHub preset
    python examples/pretrained_predictions.py --backbone ../shared/weights/efficientnet_lite0_timm  # a preset folder

Works offline with the default: MobileNet v1's ImageNet weights and the 1000 class names ship with
transferkit. A KerasHub preset (``pip install "transferkit[keras-hub]"``) downloads on first use; a
preset folder with an ImageNet classifier (a timm checkpoint, or ``ImageClassifier.save_to_preset``)
works offline. The grid is written to pretrained_predictions.png.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data import IMAGE_EXTENSIONS, read_image, resize_image
from transferkit.imagenet import decode_predictions, imagenet_classifier
from transferkit.report import plot_predictions

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("folder", nargs="?", help="folder of photos (default: scikit-image samples)")
parser.add_argument("--backbone", default="mobilenet",
                    help="a backbone name, a KerasHub preset name, or a KerasHub preset folder with a classifier")
parser.add_argument("--hub", help="a TensorFlow Hub ImageNet classifier: URL or SavedModel folder")
parser.add_argument("--out", default="pretrained_predictions.png")
args = parser.parse_args()

if args.folder:
    paths = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:10]
    if not paths:
        sys.exit(f"error: no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.folder}")
    photos = [read_image(p) for p in paths]
    names = [p.name for p in paths]
else:
    try:
        from skimage import data as samples
    except ImportError:
        sys.exit("error: pass a folder of photos, or `pip install scikit-image` for its sample photos")
    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "clock", "hubble_deep_field",
             "colorwheel", "immunohistochemistry"]
    photos = [Image.fromarray(np.asarray(getattr(samples, name)(), dtype=np.uint8)).convert("RGB") for name in names]

if args.hub:
    import keras

    from transferkit.backbones import Preprocess
    from transferkit.hub import HubLayer

    hub_layer = HubLayer(args.hub)
    size = 224
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, keras.layers.Softmax()(hub_layer(Preprocess("unit")(inputs))))
else:
    model = imagenet_classifier(args.backbone, weights="imagenet")
    size = model.input_shape[1]
batch = np.stack([resize_image(photo, size, mode="crop") for photo in photos]).astype("float32")
probabilities = model.predict(batch, verbose=0)
if probabilities.shape[1] == 1001:  # most Hub classifiers put a "background" class first
    probabilities = probabilities[:, 1:]
top = decode_predictions(probabilities, top=1)
labels = [f"{t[0][1]} {t[0][2]:.2f}" for t in top]
for name, label in zip(names, labels):
    print(f"{name}: {label}")
shown = args.hub or args.backbone
if Path(shown).is_dir():  # a folder: its name, not the whole path
    shown = Path(shown).resolve().name
plot_predictions(batch, labels, args.out, title=f"Top ImageNet class ({shown})")
print(f"grid written to {args.out}")
