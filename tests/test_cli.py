"""The transferkit command: its parser and help, train's options as phases, tables, training runs,
and one-line errors."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import write_image_folder

import transferkit as tk
from transferkit import _defaults as defaults
from transferkit.cli import main
from transferkit.cli._logs import native_lines_filtered
from transferkit.cli._options import UsageError, train_defaults
from transferkit.cli._parser import build_parser
from transferkit.cli._recipe import finetuner_options, phases_from_options

# --- the parser: no TensorFlow, every default shown


def test_help_and_argument_errors_do_not_import_tensorflow():
    code = """
import sys
from transferkit.cli import main
codes = []
for argv in (["--help"], ["train", "--help"], ["train", "--epochs", "x"], []):
    try:
        codes.append(main(argv))
    except SystemExit as exit:
        codes.append(exit.code)
print(codes, file=sys.stderr)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "numpy")), file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    *_, codes, modules = done.stderr.strip().splitlines()
    assert codes == "[0, 0, 2, 2]"
    assert modules == "[]"
    assert "usage: transferkit train" in done.stdout and "--verbose" in done.stdout


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    head, fine = tk.HEAD_PHASE, tk.FINE_TUNE_PHASE
    assert f"default: {defaults.DEFAULT_BACKBONE})" in text
    assert (f"the linear head is solved where it can be, on up to {defaults.SOLVE_MAX_IMAGES:,} training images, "
            f"else trained for {head.epochs} epochs)") in text
    assert f"learning rate of a trained head (default: {head.learning_rate:g})" in text
    assert f"(default: {fine.epochs}; 0 skips fine-tuning)" in text
    assert f"(default: {head.heads}; 1 trains one)" in text
    batch_size = next(f.default for f in dataclasses.fields(tk.PipelineSettings) if f.name == "batch_size")
    assert f"(default: {batch_size})" in text
    assert "(default: run)" in text and "(default: None)" not in text
    for command, shown in (("tune", "(default: 20)"), ("predict", "(default: 3)"), ("export", "(default: saved_model)"),
                           ("demo", "(default: transferkit-demo)"), ("lr-find", "(default: 100)")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert shown in " ".join(capsys.readouterr().out.split()), command


def test_the_defaults_shown_are_the_librarys():
    # transferkit._defaults holds them apart from the modules that use them (those import TensorFlow)
    head, fine = tk.HEAD_PHASE, tk.FINE_TUNE_PHASE
    settings = {f.name: f for f in dataclasses.fields(tk.PipelineSettings)}
    assert (head.epochs, head.learning_rate, head.heads) == (defaults.HEAD_EPOCHS, defaults.HEAD_LEARNING_RATE,
                                                             defaults.HEAD_COPIES)
    assert (fine.epochs, fine.learning_rate) == (defaults.FINE_TUNE_EPOCHS, defaults.FINE_TUNE_LEARNING_RATE)
    assert repr(fine.policy) == repr(tk.UnfreezeTop(defaults.FINE_TUNE_UNFREEZE_BLOCKS))
    assert (settings["batch_size"].default, settings["validation_split"].default, settings["seed"].default) == (
        defaults.BATCH_SIZE, defaults.VALIDATION_SPLIT, defaults.SEED)
    assert inspect.signature(tk.FineTuner).parameters["backbone"].default == defaults.DEFAULT_BACKBONE
    search = inspect.signature(tk.search).parameters
    assert (search["max_trials"].default, search["epochs"].default, search["worker_timeout"].default,
            search["tuner"].default) == (defaults.MAX_TRIALS, defaults.SEARCH_EPOCHS, defaults.WORKER_TIMEOUT,
                                         defaults.TUNERS[0])
    assert inspect.signature(tk.Predictions.top).parameters["k"].default == defaults.TOP_K
    from transferkit import export

    assert (export.FORMATS, export.QUANTIZATIONS) == (defaults.EXPORT_FORMATS, defaults.QUANTIZATIONS)
    from transferkit._demo import run_demo
    from transferkit._finetuner import REFIT_MAX_IMAGES
    from transferkit._stage import SOLVE_MAX_IMAGES  # what the head phase's solve="auto" compares with
    from transferkit._tuning import TUNERS

    demo = inspect.signature(run_demo).parameters
    assert (demo["per_class"].default, demo["image_size"].default, demo["seed"].default) == (
        defaults.DEMO_PER_CLASS, defaults.DEMO_IMAGE_SIZE, defaults.DEMO_SEED)
    assert (REFIT_MAX_IMAGES, SOLVE_MAX_IMAGES, TUNERS) == (defaults.REFIT_MAX_IMAGES, defaults.SOLVE_MAX_IMAGES,
                                                            defaults.TUNERS)


def test_verbose_goes_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["train", "data"]).verbose is False
    assert parser.parse_args(["--verbose", "train", "data"]).verbose is True
    assert parser.parse_args(["train", "data", "--verbose"]).verbose is True


def test_tensorflows_start_up_lines_are_held_back_and_the_rest_passed_on(capfd):
    with native_lines_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1796518065.331219    3814 port.cc:153] oneDNN custom operations are on.\n"
                    b"E0000 00:00:1796518648.590015   19802 cuda_platform.cc:52] failed call to cuInit\n"
                    b"something else went wrong\n")
    assert capfd.readouterr().err == "something else went wrong\n"


def test_a_command_prints_no_tensorflow_log_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "transferkit.cli", "backbones", "--filter", "resnet152"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "resnet152_v2" in done.stdout
    assert done.stderr == ""


# --- train's options as phases


def _options(**given):
    return {**train_defaults(), **given}


def test_no_options_keep_the_default_phases():
    assert phases_from_options(_options()) == (tk.HEAD_PHASE, tk.FINE_TUNE_PHASE)


def test_options_for_a_trained_head_train_it_unless_solving_is_asked_for():
    for given in ({"epochs": 3}, {"learning_rate": 0.01}, {"heads": 2}):
        head, _ = phases_from_options(_options(**given))
        assert head.solve is False, given
    head, _ = phases_from_options(_options(epochs=3, learning_rate=0.01, heads=2))
    assert (head.epochs, head.learning_rate, head.heads) == (3, 0.01, 2)
    assert phases_from_options(_options(epochs=3, solve_head=True))[0].solve is True
    assert phases_from_options(_options(solve_head=False))[0].solve is False
    assert phases_from_options(_options(solve_head="auto"))[0] == tk.HEAD_PHASE


def test_fine_tune_options_and_a_fine_tune_phase_of_no_epochs():
    head, fine = phases_from_options(_options(fine_tune_epochs=4, fine_tune_learning_rate=1e-3, unfreeze_blocks=3,
                                              mix="cutmix", lr_decay="0.5", gradual=True))
    assert head == tk.HEAD_PHASE
    assert (fine.epochs, fine.learning_rate, fine.mix, fine.lr_decay, fine.gradual) == (4, 1e-3, "cutmix", 0.5, True)
    assert repr(fine.policy) == repr(tk.UnfreezeTop(3))
    assert phases_from_options(_options(fine_tune_epochs=0))[1] is None


def test_label_smoothing_goes_to_both_phases():
    head, fine = phases_from_options(_options(label_smoothing=0.1))
    assert head.label_smoothing == fine.label_smoothing == 0.1
    assert dataclasses.replace(head, label_smoothing=0.0) == tk.HEAD_PHASE


def test_bad_option_values_name_the_option():
    cases = (({"label_smoothing": "lots"}, UsageError, "label_smoothing = 'lots': expected a number"),
             ({"lr_decay": [1]}, UsageError, "lr_decay = [1]: expected a number"),
             ({"gradual": "yes"}, UsageError, "gradual = 'yes': expected true or false"),
             ({"solve_head": "yes"}, UsageError, 'expected true, false or "auto"'),
             ({"heads": 0}, tk.ConfigError, "Expected heads to be an integer >= 1"),
             ({"label_smoothing": 1.5}, tk.ConfigError, "Expected label_smoothing in [0, 1)"))
    for given, error, message in cases:
        with pytest.raises(error) as raised:
            phases_from_options(_options(**given))
        assert message in str(raised.value), given


def test_finetuner_options():
    assert finetuner_options(_options()) == {"class_weight": None, "keep_best": True, "refit": "auto",
                                             "temperature_scaling": True, "mixed_precision": False,
                                             "jit_compile": "auto"}
    chosen = finetuner_options(_options(balanced=True, keep_last=True, refit="never", calibrate=False, xla=True))
    assert chosen["class_weight"] == "balanced" and chosen["keep_best"] is False and chosen["refit"] is False
    assert chosen["temperature_scaling"] is False and chosen["jit_compile"] is True
    with pytest.raises(UsageError, match="--refit 'sometimes'"):
        finetuner_options(_options(refit="sometimes"))


# --- the commands


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
