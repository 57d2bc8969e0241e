"""Fine-tune a pretrained backbone on a folder of labelled images, step by step.

    python examples/train_folder.py PHOTOS_DIR --weights imagenet
    python examples/train_folder.py ../shared/data/stamps5 \
        --backbone mobilenet --weights ../shared/weights/mobilenet_v1_1.0_224_imagenet_notop.weights.h5

PHOTOS_DIR holds one sub-folder per class. The script trains the head, fine-tunes the top two
blocks, prints per-class metrics and the top-3 classes of a few validation images, and saves the
run to ./run_example.
"""

import argparse

import transferkit as tk

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("data")
parser.add_argument("--backbone", default="mobilenet_v2")
parser.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
args = parser.parse_args()

spec = tk.get_backbone(args.backbone)
data = tk.load_folder(args.data, image_size=spec.input_size, augment=tk.Augment())
tuner = tk.FineTuner(spec, weights=None if args.weights == "none" else args.weights, seed=0)

tuner.train_head(data)   # phase 1: backbone frozen
tuner.fine_tune(data)    # phase 2: top blocks unfrozen, low learning rate, BatchNorm frozen

result = tuner.evaluate(data)
print(f"validation accuracy {result.accuracy:.3f}")
for name, metrics in result.per_class.items():
    print(f"  {name:12s} precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}  f1 {metrics['f1']:.2f}")

sample = list(data.validation_files.paths[:3])
for path, top in zip(sample, tuner.predict(sample).top(3)):
    print(path, top)
tuner.save("run_example")
