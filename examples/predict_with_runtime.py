"""Predict with an exported model using only its runtime — no transferkit, no Keras.

    python examples/predict_with_runtime.py EXPORT IMAGES_DIR [--json]

EXPORT is what `transferkit export` wrote: a SavedModel folder (TensorFlow), a Hub module folder
(`--format hub`; tensorflow_hub), a `.tflite` file (ai-edge-litert) or an `.onnx` file
(onnxruntime), with its `labels.txt`. The SavedModel gets each file's bytes through its
`serving_bytes` signature (decoding and resizing happen inside the model); for the Hub module
(pixels / 255, the Hub convention), TFLite and ONNX the pixels are prepared here as transferkit's loader does with its
default settings: EXIF rotation, RGB on a white background, the longer side scaled to the model's
size with bilinear resampling and the rest padded white (a run trained with `resize="crop"` or
`"stretch"`, or another background, needs that here too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def pixels(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    if image.mode in ("RGBA", "LA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    image = image.convert("RGB")
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(image.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8)


def predict(export: Path, files: list[Path]) -> np.ndarray:
    if export.is_dir() and json.loads((export / "export_report.json").read_text())["format"] == "hub":
        import tensorflow as tf
        import tensorflow_hub as hub

        module = hub.load(str(export))
        size = int(module.signatures["serving_default"].structured_input_signature[1]["images"].shape[1])
        batch = np.stack([pixels(f, size) for f in files]).astype(np.float32) / 255.0
        return module(tf.constant(batch)).numpy()
    if export.is_dir():  # SavedModel: send the files' bytes
        import tensorflow as tf

        serve = tf.saved_model.load(str(export)).signatures["serving_bytes"]
        data = tf.constant([f.read_bytes() for f in files])
        return next(iter(serve(data).values())).numpy()
    if export.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(export))
        interpreter.allocate_tensors()
        given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        size = int(given["shape"][1])
        rows = []
        for f in files:
            x = pixels(f, size)[None]
            interpreter.set_tensor(given["index"], x.astype(given["dtype"]))
            interpreter.invoke()
            y = interpreter.get_tensor(taken["index"]).astype(np.float32)
            scale, zero = taken["quantization"]
            rows.append((y - zero) * scale if scale else y)  # int8 models give uint8 probabilities
        return np.concatenate(rows)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    size = int(session.get_inputs()[0].shape[1])
    batch = np.stack([pixels(f, size) for f in files]).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--json", action="store_true", help="print {path: [probabilities]} as JSON")
    args = parser.parse_args()
    labels_file = args.export / "labels.txt" if args.export.is_dir() else args.export.with_name("labels.txt")
    labels = labels_file.read_text(encoding="utf-8").splitlines()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
    probabilities = predict(args.export, files)
    if args.json:
        print(json.dumps({str(f): p.tolist() for f, p in zip(files, probabilities)}))
        return
    for f, p in zip(files, probabilities):
        print(f"{f}: {labels[int(np.argmax(p))]} {float(np.max(p)):.3f}")


if __name__ == "__main__":
    main()
