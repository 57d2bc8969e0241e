"""The transferkit command: tables, training runs, and one-line errors."""

from __future__ import annotations

import json
import logging

from conftest import write_image_folder

from transferkit.cli import main


def test_backbones_table_lists_every_family(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "efficientnet_v2_l" in out and "tiny_cnn" not in out
    count = int(out.strip().splitlines()[-1].split()[0])
    assert count >= 30


def test_backbones_filter_and_json(capsys):
    assert main(["backbones", "--filter", "resnet1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"resnet101", "resnet152", "resnet101_v2", "resnet152_v2"}
    assert {r["preprocessing"] for r in rows} == {"caffe", "tf"}


def test_train_predict_evaluate_round_trip(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "run"
    code = main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "2",
                 "--fine-tune-epochs", "1", "--unfreeze-blocks", "1", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"model.keras", "transferkit.json", "labels.txt", "metrics.json"}
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["history"]) == {"head", "fine_tune"}
    assert len(metrics["validation"]["confusion_matrix"]) == 3
    assert metrics["best"]["phase"] in ("head", "fine_tune") and 1 <= metrics["best"]["epoch"] <= 3
    assert "Kept the weights of the best validated epoch" in capsys.readouterr().out

    assert main(["predict", str(out), str(data / "red" / "1.png"), "--top-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and len(result[0]["top"]) == 2
    first, second = (t["probability"] for t in result[0]["top"])
    assert first >= second
    assert main(["predict", str(out), str(data / "red" / "1.png"), "--top-k", "3", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)[0]["top"]
    assert {t["class"] for t in every} == {"blue", "green", "red"}
    assert abs(sum(t["probability"] for t in every) - 1.0) < 1e-5  # all classes: a softmax sums to one
    assert every[0]["probability"] == first

    assert main(["evaluate", str(out), str(data), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert sum(map(sum, evaluation["confusion_matrix"])) == 24


def test_keep_last_keeps_the_last_epoch(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "2",
                 "--fine-tune-epochs", "0", "--keep-last", "--out", str(out)]) == 0
    assert "Kept the weights" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["best"] is None
    assert json.loads((out / "transferkit.json").read_text())["best"] is None


def test_refit_flag_and_config_key(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=6)
    common = ["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "2",
              "--fine-tune-epochs", "0"]
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0  # 18 images: refitted by default
    assert "Then refitted on all 18 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["refit"]["images"] == 18
    config = tmp_path / "never.toml"
    config.write_text('refit = "never"\n')
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "never")]) == 0
    assert "refitted" not in capsys.readouterr().out
    assert json.loads((tmp_path / "never" / "transferkit.json").read_text())["refit"] is None
    config.write_text('refit = "sometimes"\n')
    assert main([*common, "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    assert "--refit 'sometimes': expected auto, always or never" in capsys.readouterr().err
    for line, message in (("refit = [1]", "expected auto, always or never"),
                          ('lr_decay = "abc"', "lr_decay = 'abc': expected a number"),
                          ('calibrate = "no"', "calibrate = 'no': expected true or false"),
                          ("heads = 0", "Expected heads to be an integer >= 1")):
        config.write_text(line + "\n")
        assert main([*common, "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error


def test_bad_settings_are_reported_before_the_images_are_read(tmp_path, capsys):
    # the folder does not exist: an error about it would mean the images were looked at first
    missing = tmp_path / "not-there"
    refit, calibrate = tmp_path / "refit.toml", tmp_path / "calibrate.toml"
    refit.write_text('refit = "sometimes"\n')
    calibrate.write_text('calibrate = "no"\n')
    solve = tmp_path / "solve.toml"
    solve.write_text('solve_head = "yes"\n')
    for flags, message in ((["--heads", "0"], "Expected heads to be an integer >= 1"),
                           (["--label-smoothing", "1.5"], "Expected label_smoothing in [0, 1)"),
                           (["--config", str(refit)], "--refit 'sometimes': expected auto, always or never"),
                           (["--config", str(calibrate)], "calibrate = 'no': expected true or false"),
                           (["--config", str(solve)], "solve_head = 'yes': expected true, false or \"auto\"")):
        assert main(["train", str(missing), "--backbone", "tiny_cnn", *flags, "--out", str(tmp_path / "run")]) == 2
        error = capsys.readouterr().err
        assert message in error and "not-there" not in error and "Traceback" not in error


def test_recipe_flags_smoothing_mixing_calibration_and_tta(tmp_path, capsys, caplog):
    data = write_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="transferkit"):
        assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "2",
                     "--fine-tune-epochs", "2", "--label-smoothing", "0.1", "--mix", "cutmix", "--no-calibration",
                     "--lr-decay", "0.5", "--gradual", "--unfreeze-blocks", "2", "--refit", "never", "--heads", "3",
                     "--out", str(out)]) == 0
    assert "Calibrated" not in capsys.readouterr().out
    assert "Phase head trains 3 copies of the head" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"] is None and len(metrics["history"]["fine_tune"]["loss"]) == 2
    assert main(["evaluate", str(out), str(data), "--tta", "3", "--no-flip", "--json"]) == 0
    assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion_matrix"])) == 18
    assert main(["predict", str(out), str(data), "--tta", "-1"]) == 2
    assert "--tta -1" in capsys.readouterr().err


def test_train_with_no_epochs_still_writes_the_run(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "0",
                 "--fine-tune-epochs", "0", "--out", str(out)]) == 0
    assert (out / "model.keras").is_file() and (out / "training_curves.png").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["history"] == {}


def test_user_mistakes_print_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        ["train", str(tmp_path / "missing"), "--backbone", "tiny_cnn", "--weights", "none"],
        ["train", str(tmp_path), "--backbone", "mobilenetv9", "--weights", "none"],
        ["train", str(tmp_path), "--backbone", "tiny_cnn", "--weights", "nothing.h5"],
        ["predict", str(tmp_path), "x.png"],
        ["lr-find", str(tmp_path / "missing"), "--backbone", "tiny_cnn", "--weights", "none"],
        ["lr-find", str(tmp_path), "--backbone", "tiny_cnn", "--weights", "none", "--steps", "1"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "Traceback" not in err
        assert len(err.splitlines()) == 1, err


def test_docs_backbone_table_is_current(capsys):
    from pathlib import Path

    assert main(["backbones", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    docs = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    start, end = "<!-- backbones-table:start -->\n", "\n<!-- backbones-table:end -->"
    assert docs[docs.index(start) + len(start): docs.index(end)] == table, (
        "docs/backbones.md is out of date: paste the output of `transferkit backbones --markdown`"
    )
