"""``transferkit review`` and ``review()``: the lists they write, on class folders and CSV files, with a
backbone's features or a trained run's, and the leaks they find across two folders.

The algorithms have their own tests (test_review_core.py), so do the decisions (test_review_apply.py)
and the page in a browser (test_pages.py).
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from conftest import color_image, write_image_folder
from tuners import tiny_tuner

import transferkit as tk
from transferkit.cli import main


def _rows(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_review_finds_a_leak_across_folders_and_reads_a_csv(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=8)
    test = write_image_folder(tmp_path / "test", per_class=2,
                              colors={"red": (200, 20, 60), "blue": (20, 60, 200)})
    leaked = test / "red" / "leaked.png"
    shutil.copyfile(data / "green" / "3.png", leaked)
    table = tmp_path / "labels.csv"
    files = tk.scan_folder(data)
    table.write_text("path,label\n" + "".join(f"{p},{files.class_names[int(y)]}\n"
                                              for p, y in zip(files.paths, files.labels)), encoding="utf-8")
    # the tiny test network sees every noisy image of one colour as nearly the same: only copies here
    result = tk.review(table, backbone="tiny_cnn", against=test, out=tmp_path / "out", duplicate_threshold=0.9999)
    assert isinstance(result, tk.Review) and len(result.files) == 24
    assert result.probabilities.shape == (24, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    first = result.duplicates[0]
    assert first["across"] and first["path_b"] == str(leaked) and first["path_a"].endswith("3.png")
    assert "1 duplicate pairs (1 across the two folders)" in result.summary()
    pairs = _rows(tmp_path / "out" / "duplicates.csv")
    assert list(pairs[0]) == ["path_a", "path_b", "similarity"] and pairs[0]["path_b"] == str(leaked)
    assert (tmp_path / "out" / "review.html").stat().st_size > 1000


def test_review_with_a_run_uses_its_network_and_flags_a_planted_label_error(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=10)
    tuner = tiny_tuner()
    tuner.fit(tk.load_folder(data, image_size=32, batch_size=8))
    tuner.save(tmp_path / "run")
    planted = data / "green" / "planted.png"  # a blue image in the green folder
    color_image((30, 40, 220), seed=12345).save(planted)
    result = tk.review(data, run=tmp_path / "run", out=tmp_path / "out")
    rows = _rows(tmp_path / "out" / "label_issues.csv")
    assert list(rows[0]) == ["path", "given", "suggested", "score"]
    assert {"path": str(planted), "given": "green", "suggested": "blue"} in [
        {k: r[k] for k in ("path", "given", "suggested")} for r in rows]
    assert len(rows) < len(result.files) // 2  # the flagged images, not every image
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)  # most suspect first


def test_review_refuses_what_it_cannot_review_with_one_clear_line(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=4)
    assert main(["review", str(data)]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
    assert main(["review", str(data), "--apply", "d.csv", "--undo"]) == 2
    assert "--undo and --apply together" in capsys.readouterr().err
    assert main(["review", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a folder of class sub-folders nor a .csv file" in capsys.readouterr().err
    one = write_image_folder(tmp_path / "one", per_class=3, colors={"red": (200, 20, 20)})
    with pytest.raises(tk.DataError, match="at least two class"):
        tk.review(one, backbone="tiny_cnn")
    with pytest.raises(tk.ConfigError, match="ranking"):
        tk.review(data, backbone="tiny_cnn", ranking="loss")
