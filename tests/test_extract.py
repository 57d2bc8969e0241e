"""`transferkit extract` fills a disk feature cache, in shards if asked; `train --cache` loads it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_image_folder

import transferkit as tk
from transferkit import FeatureCache
from transferkit._errors import DataError
from transferkit._features import shard_rows
from transferkit.cli import main

# 24 images: 18 training and 6 validation, extracted 8 at a time (4 × the batch size): the training
# split is 3 batches, so shards 0/2 and 1/2 hold 8 and 10 images; the validation split is one batch,
# so shard 0/2 of it is empty; the refit (all 24) is 3 batches, 8 and 16 images.
OPTIONS = ["--backbone", "tiny_cnn", "--weights", "imagenet", "--image-size", "16", "--batch-size", "2"]
TRAIN = ["--epochs", "2", "--fine-tune-epochs", "0", "--learning-rate", "0.01"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", per_class=8)


def _extract(data: Path, cache: Path, *extra: str) -> int:
    return main(["extract", str(data), *OPTIONS, "--cache", str(cache), *extra])


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _arrays(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = FeatureCache(folder)
    found = {key: cache.get(key) for key in cache.entries()}
    return {key: (np.asarray(arrays[0]), arrays[1]) for key, arrays in found.items() if arrays is not None}


@pytest.mark.parametrize("order", [("0/2", "1/2"), ("1/2", "0/2")])
def test_two_shards_merge_into_what_one_process_extracts(data, tmp_path, capsys, order):
    single, shared = tmp_path / "single", tmp_path / "shared"
    assert _extract(data, single) == 0
    assert "training: 18 images extracted and stored" in capsys.readouterr().out

    assert _extract(data, shared, "--shard", order[0]) == 0
    out = capsys.readouterr().out
    assert f"shards there: {order[0][0]} of 2" in out and "still to come" in out
    assert not list(shared.glob("*.npy"))  # shards only: no entry yet
    assert len(list(shared.glob("*.shard-*-of-2"))) == 3  # training, validation and the refit's

    assert _extract(data, shared, "--shard", order[1]) == 0
    out = capsys.readouterr().out
    assert out.count("merged into the cache") == 3 and "Every feature array is in" in out
    assert _names(shared) == _names(single)  # the same entries, and every shard deleted
    merged, reference = _arrays(shared), _arrays(single)
    assert len(reference) == 3 and merged.keys() == reference.keys()
    for key, (features, labels) in reference.items():
        assert np.array_equal(merged[key][0], features) and np.array_equal(merged[key][1], labels)
        assert merged[key][0].dtype == features.dtype and merged[key][1].dtype == labels.dtype

    assert _extract(data, shared, "--shard", order[0]) == 0  # a rerun finds everything there
    assert capsys.readouterr().out.count("were in the cache already") == 3


def _run(folder: Path) -> tuple[list[np.ndarray], dict]:
    tuner = tk.FineTuner.load(folder)
    return tuner.model.get_weights(), json.loads((folder / "metrics.json").read_text())


@pytest.mark.parametrize("fine_tune", ["0", "1"])
def test_train_loads_the_extracted_shards_and_trains_as_without_cache(data, tmp_path, capsys, monkeypatch,
                                                                       fine_tune):
    refit = ["--refit", "auto" if fine_tune == "0" else "never"]  # (the refit of both phases would take long)
    train = [*OPTIONS, *TRAIN, "--fine-tune-epochs", fine_tune, "--unfreeze-blocks", "1", *refit]
    assert main(["train", str(data), *train, "--out", str(tmp_path / "plain")]) == 0
    shared = tmp_path / "shared"
    for shard in ("0/2", "1/2"):
        assert _extract(data, shared, "--shard", shard, *refit) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    head_shape = FeatureCache(shared).get(next(iter(FeatureCache(shared).entries())))[0].shape[1:]
    extract = FeatureCache._extract
    extracted: list[tuple[int, ...]] = []

    def recorded(extractor, batches, *, into, progress):
        extracted.append(into.shape)
        return extract(extractor, batches, into=into, progress=progress)

    monkeypatch.setattr(FeatureCache, "_extract", staticmethod(recorded))
    assert main(["train", str(data), *train, "--out", str(tmp_path / "cached"), "--cache", str(shared)]) == 0
    out = capsys.readouterr().out
    images = "18 training + 6 validation + 24 refit" if fine_tune == "0" else "18 training + 6 validation"
    assert f"Features for the head phase: loaded from cache {shared} ({images} images), no extraction" in out
    assert ("Then refitted on all 24 images" in out) == (fine_tune == "0")
    assert not [shape for shape in extracted if shape[1:] == head_shape]  # the fine-tune phase's activations only
    assert len(extracted) == (0 if fine_tune == "0" else 2)  # its training and validation activations
    after = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    assert {name: after[name] for name in before} == before  # untouched (the fine-tune phase adds its own)

    plain_weights, plain_metrics = _run(tmp_path / "plain")
    cached_weights, cached_metrics = _run(tmp_path / "cached")
    assert len(plain_weights) == len(cached_weights)
    for a, b in zip(plain_weights, cached_weights):
        assert np.array_equal(a, b)
    assert cached_metrics == plain_metrics


def test_train_without_the_cache_extracts_and_stores_then_the_next_run_loads(data, tmp_path, capsys):
    cache = tmp_path / "new" / "cache"  # created
    assert main(["train", str(data), *OPTIONS, *TRAIN, "--refit", "never", "--out", str(tmp_path / "a"),
                 "--cache", str(cache)]) == 0
    assert ("Features for the head phase: extracting 18 training + 6 validation images and storing them in "
            f"cache {cache}") in capsys.readouterr().out
    assert len(FeatureCache(cache).entries()) == 2
    assert main(["train", str(data), *OPTIONS, *TRAIN, "--refit", "never", "--out", str(tmp_path / "b"),
                 "--cache", str(cache)]) == 0
    assert "Features for the head phase: loaded from cache" in capsys.readouterr().out


def test_an_incomplete_set_of_shards_is_not_used(data, tmp_path, capsys):
    shared = tmp_path / "shared"
    assert _extract(data, shared, "--shard", "0/2", "--refit", "never") == 0
    capsys.readouterr()
    assert main(["train", str(data), *OPTIONS, *TRAIN, "--refit", "never", "--out", str(tmp_path / "run"),
                 "--cache", str(shared)]) == 0
    out = capsys.readouterr().out
    assert ("Features for the head phase: extracting 18 training + 6 validation images and storing them in cache "
            f"{shared} (an incomplete set of shards is not used — training: shards 0 of 2; "
            "validation: shards 0 of 2)") in out
    assert _names(shared) == {f"{key}.{kind}.npy" for key in FeatureCache(shared).entries()
                              for kind in ("features", "labels")}  # whole entries; the shards are spent
    assert _extract(data, shared, "--shard", "1/2", "--refit", "never") == 0  # the late shard finds the entry
    assert capsys.readouterr().out.count("were in the cache already") == 2


@pytest.mark.parametrize("shard", ["2/2", "x", "0/0", "-1/2", "1/"])
def test_a_bad_shard_is_one_error_line(data, tmp_path, capsys, shard):
    assert _extract(data, tmp_path / "cache", f"--shard={shard}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --shard {shard}") or err.startswith(f"error: --shard '{shard}'")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_other_mistakes_are_one_error_line(data, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    augmented = tmp_path / "augmented.toml"
    augmented.write_text("augment = true\nepochs = 3\n")  # train's options that do not change features are fine
    cases = [
        (["extract", str(data), *OPTIONS, "--cache", str(a_file)], "is a file, not a folder"),
        (["train", str(data), *OPTIONS, "--cache", str(a_file), "--out", str(tmp_path / "run")],
         "is a file, not a folder"),
        (["extract", str(data), *OPTIONS], "extract: give --cache DIR"),
        (["extract", *OPTIONS, "--cache", str(tmp_path / "c")], "extract: give DATA_DIR"),
        (["extract", str(data), *OPTIONS, "--cache", str(tmp_path / "c"), "--config", str(augmented)],
         "nothing to extract"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_a_shard_that_does_not_fit_is_an_error_naming_it(data, tmp_path, capsys):
    shared = tmp_path / "shared"
    assert _extract(data, shared, "--shard", "0/2", "--refit", "never") == 0
    shard = next(p for p in shared.glob("*.shard-0-of-2") if json.loads((p / "shard.json").read_text())["rows"] == 8)
    meta = json.loads((shard / "shard.json").read_text())
    (shard / "shard.json").write_text(json.dumps({**meta, "rows": 7}))
    capsys.readouterr()
    assert _extract(data, shared, "--shard", "1/2", "--refit", "never") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Feature cache shard ") and str(shard) in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- FeatureCache's shards, unit by unit

EXTRACTOR_INPUT = 4


def _extractor() -> keras.Model:
    dense = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=0))
    return keras.Sequential([keras.Input((EXTRACTOR_INPUT,)), dense])


def _batches(rows: range, batch: int = 2):
    for start in range(rows.start, rows.stop, batch):
        stop = min(start + batch, rows.stop)
        yield np.arange(start, stop, dtype="float32")[:, None].repeat(EXTRACTOR_INPUT, axis=1), np.arange(start, stop)


def _write_shards(cache: FeatureCache, key: str, count: int, total: int = 7) -> None:
    extractor = _extractor()
    for index in range(count):
        rows = shard_rows(total, 2, index, count)
        cache.compute_shard(key, extractor, _batches(rows), shard=(index, count), rows=rows, total=total)


def test_shard_rows_are_whole_batches_that_tile_the_split():
    assert [shard_rows(7, 2, i, 2) for i in range(2)] == [range(0, 4), range(4, 7)]
    assert [shard_rows(7, 2, i, 5) for i in range(5)] == [range(0, 0), range(0, 2), range(2, 4), range(4, 6),
                                                           range(6, 7)]
    assert [len(shard_rows(3, 8, i, 3)) for i in range(3)] == [0, 0, 3]  # fewer batches than shards


def test_a_reader_merges_a_complete_set(tmp_path, monkeypatch):
    writer = FeatureCache(tmp_path)
    monkeypatch.setattr(writer, "_merge_shards", lambda key: False)  # the writers died before merging
    _write_shards(writer, "k", 3)
    assert writer.shards("k") == {3: (0, 1, 2)} and writer.entries() == []
    features, labels = FeatureCache(tmp_path).get("k")
    np.testing.assert_array_equal(labels, np.arange(7))
    np.testing.assert_allclose(features, _extractor().predict_on_batch(np.arange(7.0)[:, None].repeat(4, 1)),
                               rtol=1e-6)
    assert _names(tmp_path) == {"k.features.npy", "k.labels.npy"}


def test_two_processes_merging_at_once_both_end_with_the_entry(tmp_path, monkeypatch):
    writer = FeatureCache(tmp_path)
    monkeypatch.setattr(writer, "_merge_shards", lambda key: False)
    _write_shards(writer, "k", 2)
    # one merges and deletes the shards while the other is between reading them and copying them
    first, second = FeatureCache(tmp_path), FeatureCache(tmp_path)
    write = first._write_merged

    def interrupted(key, shards):
        assert second._merge_shards(key)
        write(key, shards)

    monkeypatch.setattr(first, "_write_merged", interrupted)
    assert first._merge_shards("k")
    np.testing.assert_array_equal(first.get("k")[1], np.arange(7))
    assert _names(tmp_path) == {"k.features.npy", "k.labels.npy"}

    monkeypatch.setattr(writer, "_merge_shards", lambda key: False)
    _write_shards(writer, "j", 2)  # and really at once, in threads
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(FeatureCache(tmp_path)._merge_shards("j")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4
    np.testing.assert_array_equal(FeatureCache(tmp_path).get("j")[1], np.arange(7))
    assert not list(tmp_path.glob("j.shard-*")) and not list(tmp_path.glob(".*"))


def test_shards_that_do_not_tile_or_do_not_match_their_name_are_errors(tmp_path, monkeypatch):
    writer = FeatureCache(tmp_path)
    monkeypatch.setattr(writer, "_merge_shards", lambda key: False)
    extractor = _extractor()
    writer.compute_shard("k", extractor, _batches(range(0, 2)), shard=(0, 2), rows=range(0, 2), total=7)
    writer.compute_shard("k", extractor, _batches(range(4, 7)), shard=(1, 2), rows=range(4, 7), total=7)
    with pytest.raises(DataError, match=r"k\.shard-1-of-2 holds rows 4–7 of 7.*does not follow on from rows 0–2"):
        FeatureCache(tmp_path).get("k")

    writer.compute_shard("m", extractor, _batches(range(0, 2)), shard=(0, 1), rows=range(0, 2), total=2)
    (tmp_path / "m.shard-0-of-1").rename(tmp_path / "n.shard-0-of-1")
    with pytest.raises(DataError, match=r"n\.shard-0-of-1 says it is shard 0 of 1 of key m"):
        FeatureCache(tmp_path).get("n")
    (tmp_path / "n.shard-0-of-1" / "labels.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"n\.shard-0-of-1 cannot be read"):
        FeatureCache(tmp_path).get("n")
    # the shard's own writer replaces a damaged copy instead of failing on it
    writer.compute_shard("n", extractor, _batches(range(0, 2)), shard=(0, 1), rows=range(0, 2), total=2)
    assert writer.shards("n") == {1: (0,)}
