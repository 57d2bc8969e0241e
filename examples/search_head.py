"""Search the classification head (size, dropout, learning rate) with keras-tuner, from Python.

    python examples/search_head.py PHOTOS_DIR [--backbone mobilenet] [--weights imagenet] [--trials 20]

The backbone's features are computed once and shared by every trial; the best head is printed.
"""

import argparse

import transferkit as tk

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("data")
parser.add_argument("--backbone", default="mobilenet")
parser.add_argument("--weights", default="imagenet")
parser.add_argument("--trials", type=int, default=20)
args = parser.parse_args()

data = tk.load_folder(args.data, image_size=tk.get_backbone(args.backbone).input_size)
result = tk.search(data, args.backbone, weights=args.weights, max_trials=args.trials, directory="search_head")
print(result.table())
print("best:", result.best_values, f"validation accuracy {result.best_score:.3f}")
