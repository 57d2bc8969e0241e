"""Atomic outputs and the run lock: a folder never holds a half-written file, and one process writes a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import transferkit
from transferkit import FeatureCache
from transferkit._atomic import LOCK_FILE, RunLock, atomic_path, atomic_paths, write_bytes_atomic, write_text_atomic
from transferkit._errors import RunInUseError, TransferkitError
from transferkit._model import build_model
from transferkit._saving import MODEL_FILE, RunMetadata, load_run, save_run
from transferkit._tuning import SearchResult
from transferkit.report import plot_history

needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="the run lock excludes only where fcntl exists")


class DiskFull(OSError):
    pass


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- atomic_path ------------------------------------------------------------------------------------------


def test_a_successful_write_replaces_the_file_through_a_hidden_temporary_in_the_same_folder(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".metrics.json.")
        assert temporary.name.endswith(".tmp") and not temporary.exists()
        temporary.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block returns
    assert target.read_text() == "new" and _names(tmp_path) == {"metrics.json"}
    with atomic_path(tmp_path / "model.keras", keep_suffix=True) as temporary:
        assert temporary.suffix == ".keras" and temporary.name.startswith(".model.keras.")
        temporary.write_bytes(b"zip")
    assert (tmp_path / "model.keras").read_bytes() == b"zip"


@pytest.mark.parametrize("failure", [DiskFull("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, failure):
    target = write_text_atomic(tmp_path / "labels.txt", "cat\ndog\n")
    with pytest.raises(type(failure)), atomic_path(target) as temporary:
        temporary.write_text("ca")
        raise failure
    assert target.read_text() == "cat\ndog\n" and _names(tmp_path) == {"labels.txt"}


def test_a_writer_that_writes_nothing_is_an_error_and_changes_nothing(tmp_path):
    target = write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    with pytest.raises(FileNotFoundError, match="Nothing was written"), atomic_path(target):
        pass
    assert target.read_bytes() == b"\x00\x01" and _names(tmp_path) == {"a.bin"}


def test_a_folder_result_replaces_the_old_folder_whole(tmp_path):
    export = tmp_path / "saved_model"
    with atomic_path(export) as temporary:
        (temporary / "variables").mkdir(parents=True)
        (temporary / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(DiskFull), atomic_path(export) as temporary:
        temporary.mkdir()
        (temporary / "saved_model.pb").write_bytes(b"ne")
        raise DiskFull("disk full")
    assert (export / "saved_model.pb").read_bytes() == b"old" and _names(tmp_path) == {"saved_model"}
    with atomic_path(export) as temporary:
        temporary.mkdir()
        (temporary / "saved_model.pb").write_bytes(b"new")
    assert _names(export) == {"saved_model.pb"} and (export / "saved_model.pb").read_bytes() == b"new"
    assert _names(tmp_path) == {"saved_model"}


def test_files_written_together_are_renamed_only_when_all_are_complete(tmp_path):
    first, second = write_text_atomic(tmp_path / "a.txt", "old a"), write_text_atomic(tmp_path / "b.txt", "old b")
    with pytest.raises(DiskFull), atomic_paths(first, second) as (a, b):
        a.write_text("new a")
        b.write_text("ne")
        raise DiskFull("disk full")  # while b is written: a, complete, must stay old too
    assert (first.read_text(), second.read_text()) == ("old a", "old b") and _names(tmp_path) == {"a.txt", "b.txt"}


# --- save_run, report, feature cache, search table --------------------------------------------------------


def _model(seed: int) -> keras.Model:
    """A small transferkit model (save_run writes those) whose first weights depend on ``seed``."""
    keras.utils.set_random_seed(seed)
    return build_model("tiny_cnn", num_outputs=2, weights=None, image_size=8)


def _meta(*classes: str) -> RunMetadata:
    return RunMetadata(backbone="tiny", hub_handle=None, weights=None, image_size=8, class_names=classes, head={})


def _half_save(self, filepath, *args, **kwargs):
    Path(filepath).write_bytes(b"PK\x03\x04half a zip")
    raise DiskFull("No space left on device")


def test_a_save_that_fails_midway_leaves_the_previous_run_loadable(tmp_path, monkeypatch):
    run = tmp_path / "run"
    old = _model(seed=1)
    save_run(run, old, _meta("cat", "dog"))
    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", _half_save)
        with pytest.raises(DiskFull):
            save_run(run, _model(seed=2), _meta("ant", "bee", "cow"))
    with monkeypatch.context() as patch:  # the model is complete, the metadata fails: the model stays old too
        patch.setattr(RunMetadata, "to_json", lambda self: (_ for _ in ()).throw(DiskFull("disk full")))
        with pytest.raises(DiskFull):
            save_run(run, _model(seed=2), _meta("ant", "bee", "cow"))
    assert _names(run) == {MODEL_FILE, "transferkit.json"}
    model, meta = load_run(run)
    assert meta.class_names == ("cat", "dog")
    np.testing.assert_array_equal(model.get_weights()[0], old.get_weights()[0])

    new = _model(seed=2)
    save_run(run, new, _meta("ant", "bee", "cow"))
    model, meta = load_run(run)
    assert meta.class_names == ("ant", "bee", "cow") and _names(run) == {MODEL_FILE, "transferkit.json"}
    np.testing.assert_array_equal(model.get_weights()[0], new.get_weights()[0])


def test_plots_are_written_whole_in_the_format_of_their_suffix(tmp_path, monkeypatch):
    history = {"head": {"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]}}
    no_suffix = plot_history(history, tmp_path / "curves")
    assert no_suffix == tmp_path / "curves" and no_suffix.read_bytes().startswith(b"\x89PNG")
    plot_history(history, tmp_path / "curves.pdf")
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    import matplotlib.figure

    def half_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PN")
        raise DiskFull("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_savefig)
    with pytest.raises(DiskFull):
        plot_history(history, tmp_path / "curves.pdf")
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert _names(tmp_path) == {"curves", "curves.pdf"}


def test_a_cache_key_appears_only_when_features_and_labels_are_complete(tmp_path):
    extractor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    batches = [(np.full((2, 4), i, "float32"), np.array([i, i + 1])) for i in range(2)]

    def interrupted():
        yield batches[0]
        raise DiskFull("disk full")

    cache = FeatureCache(tmp_path / "cache")
    for broken, error in ((interrupted(), DiskFull), (iter(batches[:1]), RuntimeError)):  # dies / comes up short
        with pytest.raises(error):
            cache.compute("k", extractor, broken, count=4)
        assert list((tmp_path / "cache").iterdir()) == [] and cache.get("k") is None
    stored = cache.compute("k", extractor, iter(batches), count=4)
    assert _names(tmp_path / "cache") == {"k.features.npy", "k.labels.npy"}
    features, labels = FeatureCache(tmp_path / "cache").get("k")
    np.testing.assert_array_equal(features, stored.features)
    np.testing.assert_array_equal(labels, [0, 1, 1, 2])
    (tmp_path / "cache" / "k.features.npy").unlink()  # labels alone are no entry
    assert FeatureCache(tmp_path / "cache").get("k") is None


def test_the_trials_table_is_written_through_a_temporary(tmp_path):
    result = SearchResult(rows=[{"trial": "0", "score": 0.5}], best_values={}, best_score=0.5, directory=tmp_path,
                          settings=None)  # type: ignore[arg-type]
    result.write_csv(tmp_path / "trials.csv")
    assert (tmp_path / "trials.csv").read_text().splitlines() == ["trial,score", "0,0.5"]
    assert _names(tmp_path) == {"trials.csv"}


# --- the run lock -----------------------------------------------------------------------------------------

# The child imports transferkit's modules without the package's __init__, which loads TensorFlow
# (seconds): the lock needs only the standard library.
_CHILD = textwrap.dedent("""
    import sys, time, types
    package = types.ModuleType("transferkit")
    package.__path__ = [sys.argv[3]]
    sys.modules["transferkit"] = package
    from transferkit._atomic import RunLock
    from transferkit._errors import RunInUseError
    if sys.argv[1] == "hold":
        RunLock(sys.argv[2]).acquire()
        print("locked", flush=True)
        time.sleep(120)
    try:
        RunLock(sys.argv[2]).acquire()
    except RunInUseError as error:
        print(error, flush=True)
        sys.exit(3)
""")


def _child(run: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", _CHILD, mode, str(run), str(Path(transferkit.__file__).parent)]


@needs_flock
def test_a_second_process_is_told_which_process_holds_the_run(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.held and (run / LOCK_FILE).is_file()
        refused = subprocess.run(_child(run, "try"), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 3, refused.stderr
        message = refused.stdout.strip()
        assert "\n" not in message
        assert message.startswith(f"{run} is in use by process ") and f"process {os.getpid()} on " in message
        assert message.endswith("— wait for it to finish, or choose another --out.")
        with pytest.raises(RunInUseError):  # locks are per open file: another RunLock in this process too
            RunLock(run).acquire()
    assert not lock.held and (run / LOCK_FILE).read_text() == ""  # the file stays, empty
    assert subprocess.run(_child(run, "try"), capture_output=True, timeout=60).returncode == 0


@needs_flock
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(_child(run, "hold"), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError) as refused:
            RunLock(run).acquire()
        assert isinstance(refused.value, TransferkitError)
        assert f"is in use by process {holder.pid} on " in str(refused.value)
        assert "(-c hold " in str(refused.value)  # the holder's command line
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    with RunLock(run) as lock:
        assert lock.held
