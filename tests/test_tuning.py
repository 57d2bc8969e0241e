"""keras-tuner search over the head and the fine-tune depth, offline on tiny data."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import write_image_folder
from PIL import Image

import transferkit as tk
from transferkit import FeatureCache, search
from transferkit.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_image_folder(tmp_path_factory.mktemp("tune") / "data", per_class=8)
    return tk.load_folder(folder, image_size=32, batch_size=8, seed=0)


def test_head_search_shares_one_feature_extraction_and_resumes(data, tmp_path):
    cache = FeatureCache()
    result = search(data, "tiny_cnn", weights="imagenet", max_trials=3, epochs=2, directory=tmp_path, cache=cache)
    assert len(result.rows) == 3 and cache.misses == 2  # train and validation features, once for all trials
    assert cache.hits == 2 * 2
    assert {"units", "dropout", "learning_rate", "score", "seconds"} <= set(result.rows[0])
    assert result.best_score == max(row["score"] for row in result.rows)
    best = result.best_tuner(cache=cache)
    assert best.model is None and best.settings.head.hidden_units == ((result.best_values["units"],)
                                                              if result.best_values["units"] else ())
    resumed = search(data, "tiny_cnn", weights="imagenet", max_trials=5, epochs=2, directory=tmp_path)
    assert [r["trial"] for r in resumed.rows[:3]] == [r["trial"] for r in result.rows]  # kept, not rerun
    assert len(resumed.rows) == 5


def test_head_only_trials_build_the_backbone_once_and_score_on_cached_features(data, tmp_path, monkeypatch):
    import transferkit._model as model_module
    from transferkit._tuning import trial_score

    built = []

    def counted(*args, **kwargs):
        built.append(args)
        return build_backbone(*args, **kwargs)

    build_backbone = model_module.build_backbone
    monkeypatch.setattr(model_module, "build_backbone", counted)
    result = search(data, "tiny_cnn", weights="imagenet", max_trials=3, epochs=2, directory=tmp_path)
    assert len(result.rows) == 3 and len(built) == 1  # the first trial's frozen backbone serves all three
    assert all(0 <= row["score"] <= 1 for row in result.rows)

    # the score a trial gets without a second pass equals evaluating the trained model on the images
    tuner = result.settings.tuner({"units": 0, "dropout": 0.0, "learning_rate": 0.01}, cache=FeatureCache())
    tuner.fit(data, verbose=0)
    evaluated = tuner.evaluate(data).accuracy
    passes = []
    monkeypatch.setattr(tuner, "evaluate", lambda *args, **kwargs: passes.append(args))
    assert trial_score(tuner, data) == pytest.approx(evaluated)
    assert passes == []  # scored from the evaluation fit made, not by running the model again


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband"])
def test_two_phase_trials_with_other_tuners(data, tmp_path, tuner):
    result = search(data, "tiny_cnn", weights="imagenet", max_trials=2, epochs=2, fine_tune=True,
                    fine_tune_epochs=1, tuner=tuner, directory=tmp_path)
    # two trials each: max_trials for Bayesian; Hyperband with at most 2 epochs runs one bracket of 2
    assert len(result.rows) == 2 and len({row["trial"] for row in result.rows}) == 2
    for row in result.rows:  # each row is what keras-tuner recorded for its trial
        recorded = json.loads((result.directory / f"trial_{row['trial']}" / "trial.json").read_text())
        values = {k: v for k, v in recorded["hyperparameters"]["values"].items() if not k.startswith("tuner/")}
        assert recorded["status"] == "COMPLETED" and row["score"] == pytest.approx(recorded["score"])
        assert {k: v for k, v in row.items() if k not in ("trial", "score", "seconds")} == values
        assert 0 <= row["score"] <= 1 and row["seconds"] > 0
        assert 1 <= row["fine_tune_blocks"] <= 4 and 1e-5 <= row["fine_tune_learning_rate"] <= 1e-3
    best = {k: v for k, v in result.best_values.items() if not k.startswith("tuner/")}
    assert result.best_score == max(row["score"] for row in result.rows)
    assert any(row["score"] == result.best_score and {k: row[k] for k in best} == best for row in result.rows)


def test_tune_command_writes_table_plot_and_best_model(data, tmp_path, capsys):
    folder = str(data.train_files.paths[0]).rsplit("/", 2)[0]
    code = main(["tune", folder, "--backbone", "tiny_cnn", "--weights", "imagenet", "--max-trials", "2",
                 "--epochs", "2", "--out", str(tmp_path / "tune")])
    assert code == 0
    out = tmp_path / "tune"
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"trial", "score", "seconds"} <= set(rows[0])
    with Image.open(out / "search_scores.png") as image:
        assert image.size[0] > 300
    assert (out / "model.keras").is_file() and (out / "metrics.json").is_file()
    assert "Best trial" in capsys.readouterr().out
    assert main(["tune", folder, "--backbone", "tiny_cnn", "--weights", "imagenet", "--max-trials", "3",
                 "--epochs", "2", "--out", str(out)]) == 0
    assert "Resuming" in capsys.readouterr().out
