"""Never lose a run: real SIGKILLs of `transferkit train` and `tune`, resuming, the divergence guard.

The fault-injection tests run the command in a subprocess whose only addition is a hook that
sends the process SIGKILL at a chosen moment (after a given epoch is recorded, or between
writing model.keras and renaming it into place); then the plain command runs again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

import transferkit as tk

TRAIN = ["--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "32", "--batch-size", "8",
         "--epochs", "5", "--learning-rate", "0.01", "--fine-tune-epochs", "3", "--fine-tune-learning-rate", "0.001",
         "--unfreeze-blocks", "1", "--seed", "0"]

# Runs `transferkit <args>` with a kill hook chosen by $KILL_AT:
#   "<phase>:<n>[:refit]"  SIGKILL right after the checkpoint of that phase's n-th epoch is written
#   "save"                 SIGKILL after model.keras is written under its temporary name, before the rename
#   "trial:<n>"            SIGKILL when the n-th trial of a search starts training
HOOKED_CLI = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import transferkit._atomic as atomic
    import transferkit._checkpoint as checkpoint
    import transferkit._finetuner as finetuner
    from transferkit.cli import main

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    where = os.environ.get("KILL_AT", "")
    if where == "save":
        replace = atomic._replace
        def _replace(temporary, final):
            if Path(final).name == "model.keras":
                die()
            replace(temporary, final)
        atomic._replace = _replace
    elif where.startswith("trial:"):
        fit, calls = finetuner.FineTuner.fit, []
        def fit_then_die(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == int(where.split(":")[1]):
                die()
            return fit(self, *args, **kwargs)
        finetuner.FineTuner.fit = fit_then_die
    elif where:
        phase, epoch, *refit = where.split(":")
        record = checkpoint.Checkpoint.record_epoch
        def record_then_die(self, stage, arrays):
            record(self, stage, arrays)
            if stage.name == phase and stage.epochs == int(epoch) and stage.refit == bool(refit):
                die()
        checkpoint.Checkpoint.record_epoch = record_then_die
    sys.exit(main(sys.argv[1:]))
""")


def _transferkit(*args: str, kill_at: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILL_AT": kill_at, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", HOOKED_CLI, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _weights(run: Path) -> list[np.ndarray]:
    return tk.FineTuner.load(run).model.get_weights()


def _check_run_folder(run: Path) -> None:
    """Every file of a finished run loads, and nothing temporary or resumable is left."""
    tuner = tk.FineTuner.load(run)
    assert tuner.predict(np.zeros((32, 32, 3), np.uint8)).probabilities.shape == (1, 3)
    json.loads((run / "metrics.json").read_text())
    json.loads((run / "transferkit.json").read_text())
    for png in run.glob("*.png"):
        with Image.open(png) as image:
            image.load()
    assert not (run / "checkpoint").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("reliability") / "images")


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every killed one is compared with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = _transferkit("train", str(photos), *TRAIN, "--out", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.mark.parametrize(("kill_at", "resumed"), [
    ("head:3", "Resuming from head epoch 3"),
    ("fine_tune:2", "Resuming from fine_tune epoch 2"),
    ("fine_tune:1:refit", "Resuming from fine_tune epoch 1 of the refit on all images"),
    ("save", "Resuming from fine_tune epoch 3 (finished) of the refit on all images"),
])
def test_train_killed_with_sigkill_resumes_to_the_uninterrupted_result(photos, reference, tmp_path, kill_at,
                                                                          resumed):
    run = tmp_path / "run"
    killed = _transferkit("train", str(photos), *TRAIN, "--out", str(run), kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoint" / "state.json").is_file()
    assert not (run / "model.keras").exists()

    again = _transferkit("train", str(photos), *TRAIN, "--out", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    assert resumed in again.stdout
    _check_run_folder(run)
    # deterministic here (tiny backbone, fixed seed, no augmentation): the same weights as never killed
    ours, theirs = _weights(run), _weights(reference)
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs):
        np.testing.assert_allclose(mine, other, rtol=0, atol=1e-6)
    history = json.loads((run / "transferkit.json").read_text())["history"]
    assert history == json.loads((reference / "transferkit.json").read_text())["history"]


def test_a_run_with_a_solved_head_killed_while_fine_tuning_resumes_to_the_uninterrupted_result(photos, tmp_path):
    solved = [*TRAIN, "--solve-head"]
    reference = tmp_path / "reference"
    done = _transferkit("train", str(photos), *solved, "--out", str(reference))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Solved the head on the backbone's features" in done.stdout
    for kill_at, resumed in (("fine_tune:2", "Resuming from fine_tune epoch 2"),
                             ("fine_tune:1:refit", "Resuming from fine_tune epoch 1 of the refit on all images")):
        run = tmp_path / kill_at.replace(":", "_")
        killed = _transferkit("train", str(photos), *solved, "--out", str(run), kill_at=kill_at)
        assert killed.returncode == -9, killed.stderr[-2000:]
        again = _transferkit("train", str(photos), *solved, "--out", str(run))
        assert again.returncode == 0, again.stderr[-2000:]
        assert resumed in again.stdout
        _check_run_folder(run)
        for mine, other in zip(_weights(run), _weights(reference), strict=True):
            np.testing.assert_allclose(mine, other, rtol=0, atol=1e-6)
        history = json.loads((run / "transferkit.json").read_text())["history"]
        assert history == json.loads((reference / "transferkit.json").read_text())["history"]
        assert len(history["head"]["loss"]) == 1  # the solved head phase's one epoch
        # the solve is reported even where the resumed run took it from the checkpoint
        recorded = json.loads((run / "metrics.json").read_text())["solved"]["head"]
        expected = json.loads((reference / "metrics.json").read_text())["solved"]["head"]
        assert {k: v for k, v in recorded.items() if k != "seconds"} == {
            k: v for k, v in expected.items() if k != "seconds"}
        assert "Solved the head on the backbone's features" in again.stdout


def test_restart_starts_over_and_other_settings_are_refused(photos, tmp_path, capsys):
    from transferkit.cli import main

    run = tmp_path / "run"
    killed = _transferkit("train", str(photos), *TRAIN, "--out", str(run), kill_at="head:2")
    assert killed.returncode == -9
    changed = [*TRAIN[:-1], "1"]  # another seed
    assert main(["train", str(photos), *changed, "--out", str(run)]) == 2
    refused = capsys.readouterr().err
    assert refused.count("error:") == 1 and "seed" in refused and "--restart" in refused
    assert main(["train", str(photos), *changed, "--out", str(run), "--restart"]) == 0
    assert "Resuming" not in capsys.readouterr().out
    _check_run_folder(run)


def test_tune_killed_mid_trial_neither_loses_nor_repeats_trials(photos, tmp_path):
    out = tmp_path / "tune"
    args = ["tune", str(photos), "--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "32",
            "--max-trials", "3", "--epochs", "2", "--seed", "0", "--out", str(out)]
    killed = _transferkit(*args, kill_at="trial:2")
    assert killed.returncode == -9
    again = _transferkit(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resuming" in again.stdout
    rows = (out / "trials.csv").read_text().strip().splitlines()[1:]
    ids = [row.split(",")[0] for row in rows]
    assert len(ids) == 3 and len(set(ids)) == 3
    _check_run_folder(out)


FAST_HEAD = dataclasses.replace(tk.HEAD_PHASE, epochs=4, learning_rate=1e-2, solve=False)  # trained
FAST_TUNE = dataclasses.replace(tk.FINE_TUNE_PHASE, epochs=3, learning_rate=1e-3, policy=tk.UnfreezeTop(1))


class _StopAfter(keras.callbacks.Callback):
    """Ctrl-C after ``n`` epochs of the fit (in-process)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_fit_checkpoint_dir_resumes_in_python_with_the_same_curves(photos, tmp_path):
    data = tk.load_folder(photos, image_size=32, batch_size=8)

    def tuner() -> tk.FineTuner:
        return tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=FAST_HEAD, fine_tune_phase=FAST_TUNE, seed=0,
                            keep_best="epoch")

    whole = tuner()
    whole.fit(data, verbose=0)
    first = tuner()
    with pytest.raises(KeyboardInterrupt):
        first.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck", callbacks=[_StopAfter(6)])
    assert first.resume_point(tmp_path / "ck") == "fine_tune epoch 1"
    assert list((tmp_path / "ck" / "features").glob("*.features.npy"))  # features on disk, for the rerun
    second = tuner()
    second.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck")
    assert second.history == whole.history
    assert second.best_epoch == whole.best_epoch
    assert len(second.model.get_weights()) == len(whole.model.get_weights())
    for ours, theirs in zip(second.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    # a finished checkpoint restores everything without training
    third = tuner()
    third.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck", callbacks=[_StopAfter(1)])
    assert third.history == whole.history


def test_gradual_unfreezing_resumes_in_its_stage(photos, tmp_path):
    # 20 or more validation images: stage ends are ranked by calibrated loss where they get some wrong
    data = tk.load_folder(photos, image_size=32, batch_size=8, validation_split=0.6)
    gradual = dataclasses.replace(FAST_TUNE, epochs=4, policy=tk.UnfreezeTop(2), gradual=True)

    def tuner() -> tk.FineTuner:
        return tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=FAST_HEAD, fine_tune_phase=gradual, seed=0,
                            refit=False)

    whole = tuner()
    whole.fit(data, verbose=0)
    first = tuner()
    with pytest.raises(KeyboardInterrupt):  # in the second stage of the fine-tune phase
        first.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck", callbacks=[_StopAfter(FAST_HEAD.epochs + 3)])
    second = tuner()
    second.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck")
    assert second.history == whole.history
    assert len(second.history["fine_tune"]["loss"]) == 4
    for ours, theirs in zip(second.model.get_weights(), whole.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert second.best_epoch == whole.best_epoch  # the same phase end kept, ranked the same way


def test_a_validation_loss_that_diverges_keeps_the_phases_last_good_epoch():
    keeper = tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=FAST_HEAD, fine_tune_phase=None, seed=0)
    model = keeper.build(3)
    from transferkit._selection import BestWeights, DivergenceGuard

    best = BestWeights(model, phase="head", previous=None, by_accuracy=True)
    guard = best.guard = DivergenceGuard("head")
    guard.set_model(model)
    guard.on_train_begin()
    for epoch, val_loss in enumerate([0.9, 0.7, float("nan")]):
        logs = {"loss": 1.0, "val_loss": val_loss, "val_accuracy": 0.5 + 0.1 * epoch}
        guard.on_epoch_end(epoch, logs)
        best.on_epoch_end(epoch, logs)
    best.on_train_end()
    assert guard.diverged is not None and guard.diverged.step is None and guard.good_epoch == 2
    assert best.restore().best.epoch == 2  # the last good epoch, not nothing


def test_a_rerun_after_a_divergence_diverges_again_instead_of_saving_a_random_head(photos, tmp_path):
    data = tk.load_folder(photos, image_size=32)
    explode = dataclasses.replace(FAST_HEAD, learning_rate=1e38)
    for _ in range(2):
        tuner = tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=explode, fine_tune_phase=None, seed=0)
        with pytest.raises(tk.TrainingDivergedError, match="diverged at epoch 1"):
            tuner.fit(data, verbose=0, checkpoint_dir=tmp_path / "ck")


def test_a_diverging_phase_stops_and_keeps_the_last_good_weights(photos, caplog):
    data = tk.load_folder(photos, image_size=32, batch_size=8)
    explode = dataclasses.replace(FAST_TUNE, learning_rate=1e12, schedule="constant", optimizer="sgd")
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=FAST_HEAD, fine_tune_phase=explode, seed=0,
                         refit=False)
    with caplog.at_level("WARNING", logger="transferkit"):
        tuner.fit(data, verbose=0)
    assert tuner.divergences and tuner.divergences[0].phase == "fine_tune"
    assert "diverged at epoch 5, step" in caplog.text and "learning rate" in caplog.text
    assert all(np.isfinite(w).all() for w in tuner.model.get_weights())
    assert tuner.best_epoch is not None and tuner.best_epoch.phase == "head"
    assert tuner.evaluate(data).accuracy > 0.5


def test_a_run_that_diverges_before_any_good_epoch_is_one_error_line(photos, tmp_path):
    run = tmp_path / "run"
    done = _transferkit("train", str(photos), "--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "32",
                        "--epochs", "3", "--learning-rate", "1e38", "--fine-tune-epochs", "0", "--out", str(run))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "learning rate" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()


def test_build_before_fit_takes_the_datas_size_and_classes(photos):
    data = tk.load_folder(photos, image_size=40, batch_size=8)
    tuner = tk.FineTuner("tiny_cnn", weights="imagenet", head_phase=FAST_HEAD, fine_tune_phase=None, refit=False)
    tuner.build(3)
    tuner.fit(data, verbose=0)
    assert tuner.model.input_shape[1] == 40 and tuner.class_names == data.class_names
    fixed = tk.FineTuner("tiny_cnn", weights="imagenet", image_size=32, head_phase=FAST_HEAD, fine_tune_phase=None)
    fixed.build(3)
    with pytest.raises(tk.DataError, match="image_size=40"):
        fixed.fit(data, verbose=0)
