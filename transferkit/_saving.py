"""The on-disk format of a trained FineTuner: ``model.keras`` plus versioned ``transferkit.json``.

Format history:

* 1 — the head's layers sit directly in the model after the backbone.
* 2 — the head is a nested model named ``"head"`` (see ``_model.py``). Format-1 runs still load,
  predict and evaluate; further training on them runs without cached features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from transferkit._errors import DataError
from transferkit._types import Color, History, PathLike

MODEL_FILE = "model.keras"
META_FILE = "transferkit.json"
FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True, kw_only=True)
class RunMetadata:
    """Everything besides the Keras model that a saved FineTuner needs to come back as it was."""

    backbone: str
    hub_handle: str | None
    weights: str | None
    image_size: int
    class_names: tuple[str, ...]
    head: dict[str, Any]
    resize: str = "pad"
    background: Color = (255, 255, 255)
    history: dict[str, History] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    format: int = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["class_names"], data["background"] = list(self.class_names), list(self.background)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> RunMetadata:
        data = json.loads(text)
        version = data.get("format", 1)
        if version not in READABLE_FORMATS:
            raise DataError(f"{where} is format {version}; this transferkit reads formats {list(READABLE_FORMATS)}. "
                            "Upgrade transferkit to load it.")
        return cls(
            backbone=data["backbone"], hub_handle=data.get("hub_handle"), weights=data.get("weights"),
            image_size=int(data["image_size"]), class_names=tuple(data["class_names"]), head=data["head"],
            resize=data.get("resize", "pad"), background=tuple(data.get("background", (255, 255, 255))),
            history=data.get("history", {}), best=data.get("best"), refit=data.get("refit"),
            calibration=data.get("calibration"),
            format=version,
        )


def save_run(directory: PathLike, model: keras.Model, meta: RunMetadata) -> Path:
    """Write ``model.keras`` and ``transferkit.json`` into ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    (out / META_FILE).write_text(meta.to_json())
    return out


def load_run(directory: PathLike, *, safe_mode: bool = True) -> tuple[keras.Model, RunMetadata]:
    """Read what :func:`save_run` wrote."""
    root = Path(directory)
    if not (root / MODEL_FILE).is_file() or not (root / META_FILE).is_file():
        raise DataError(f"{str(root)!r} is not a saved FineTuner: expected {MODEL_FILE} and {META_FILE} in it.")
    meta = RunMetadata.from_json((root / META_FILE).read_text(), where=str(root / META_FILE))
    return keras.saving.load_model(root / MODEL_FILE, safe_mode=safe_mode), meta
