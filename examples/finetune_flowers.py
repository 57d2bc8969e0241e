"""Fine-tune MobileNetV2 on the TensorFlow flowers photos (3,670 images, 5 classes).

    python examples/finetune_flowers.py                  # downloads flower_photos when the network allows
    python examples/finetune_flowers.py --data DIR       # any DIR/<class>/<images> folder
    python examples/finetune_flowers.py --data DIR --backbone mobilenet --weights FILE.weights.h5

The classic recipe — new head on a frozen MobileNetV2, then fine-tuning of its top blocks at a
lower learning rate — with the preprocessing, BatchNorm and learning-rate schedule handled by
transferkit. Writes the model, metrics and plots to ./flowers_run.
"""

import argparse
import sys
from pathlib import Path

import keras

import transferkit as tk

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", help="a folder of class sub-folders instead of the download")
parser.add_argument("--backbone", default="mobilenet_v2", help="registry name (`transferkit backbones`)")
parser.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
parser.add_argument("--out", default="flowers_run")
args = parser.parse_args()

if args.data:
    data_dir = Path(args.data)
else:
    try:
        archive = keras.utils.get_file("flower_photos", origin=FLOWERS_URL, extract=True)
    except Exception:  # Keras reports network failures as a bare Exception
        sys.exit("error: cannot download flower_photos (no network access?); "
                 "pass --data DIR with a folder of class sub-folders instead.")
    found = list(Path(archive).rglob("daisy"))
    data_dir = found[0].parent if found else Path(archive)

try:
    data = tk.load_folder(data_dir, image_size=224, augment=tk.Augment(), progress=True)
    tuner = tk.FineTuner(args.backbone, weights=None if args.weights == "none" else args.weights, seed=0)
    tuner.fit(data)
except tk.TransferkitError as error:  # a wrong path, backbone or weights file: one line, no traceback
    sys.exit(f"error: {error}")
tuner.save(args.out)
metrics = tuner.write_report(data, args.out)
print(f"validation accuracy {metrics['validation']['accuracy']:.3f}; model and report in {args.out}/")
