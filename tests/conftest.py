"""Shared fixtures: no network, a private Keras cache, tiny generated image folders."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_WEIGHTS = SHARED / "weights"
STAMPS5 = SHARED / "data" / "stamps5"
needs_shared = pytest.mark.skipif(
    not (SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5").is_file() or not STAMPS5.is_dir(),
    reason="needs ../shared (real weights and photos)",
)


class NetworkBlocked(OSError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests run offline: any connection attempt fails at once, and Keras' cache starts empty."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlocked("network access is blocked in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))


@pytest.fixture(autouse=True)
def _fresh_keras_session() -> None:
    yield
    keras.backend.clear_session()


def color_image(color: tuple[int, int, int], size: int = 24, seed: int = 0) -> Image.Image:
    """A noisy image of one dominant colour, so a tiny network can learn the class."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.float64)[None, None, :]
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


CLASS_COLORS = {"blue": (30, 40, 220), "green": (40, 200, 40), "red": (220, 30, 30)}


def write_image_folder(root: Path, per_class: int = 12, colors: dict = CLASS_COLORS) -> Path:
    """root/<class>/<n>.png|jpg with images whose colour gives away the class."""
    for c, (name, color) in enumerate(colors.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = color_image(color, seed=100 * c + i)
            image.save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


def write_bad_files(folder: Path) -> Path:
    """Files a real photo folder ends up with: empty, text, truncated, corrupt, another extension."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not a picture")
    buffer = io.BytesIO()
    color_image((1, 2, 3), size=64).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "readme.txt").write_text("not an image either")
    return folder


# The fast loop (`pytest -m "not slow"`) leaves out what starts processes, kills and resumes runs,
# or trains real-size networks; `make test` and CI run everything.
SLOW_FILES = {"test_reliability.py", "test_distributed_search.py", "test_multiworker.py", "test_distribute.py",
              "test_main_job.py", "test_extract.py", "test_accelerators.py", "test_portable.py",
              "test_pages.py"}
SLOW_TESTS = {
    "test_each_family_pools_the_way_its_authors_probe", "test_random_timm_resnet18_folder_is_a_keras_hub_backbone",
    "test_real_lite0_folder_is_a_keras_hub_backbone",
    "test_review_with_a_run_uses_its_network_and_flags_a_planted_label_error",
    "test_real_copies_score_above_the_default_threshold_and_different_photos_below",
    "test_a_transformer_preset_trains_saves_loads_evaluates_and_exports",
    "test_the_command_trains_a_cnn_preset_and_exports_it_to_int8_tflite",
    "test_without_keras_hub_one_line_says_how_to_install",
    "test_real_weights_on_real_photos_fit_save_load_predict",
    "test_a_custom_policy_applies_directly_and_in_the_finetuner",
    "test_finetuner_with_a_registered_hub_backbone", "test_a_command_prints_no_tensorflow_log_lines",
    "test_fit_after_a_sweep_is_the_fit_without_it",
    "test_fit_keeps_the_phase_with_the_lower_calibrated_validation_loss",
    "test_label_smoothing_and_mixing_train_on_soft_labels_and_leave_integer_labels_working",
    "test_real_full_and_headless_weights_files_agree", "test_recipe_flags_smoothing_mixing_calibration_and_tta",
    "test_import_does_not_pull_optional_dependencies", "test_refit_flag_and_config_key",
    "test_train_predict_evaluate_round_trip", "test_tune_command_writes_table_plot_and_best_model",
    "test_tensorflow_is_imported_on_first_use_of_a_name_that_needs_it",
    "test_calibrated_loss_overrides_accuracy_and_plain_loss_and_is_skipped_when_every_image_is_right",
    "test_train_run_carries_on_after_an_interruption", "test_two_phase_trials_with_other_tuners",
    # over about 3.5 s each on 2 cores: the fast loop keeps a quicker test of the same module
    "test_fit_calibrates_probabilities_without_changing_predictions",
    "test_refit_trains_again_on_all_images_and_reports_the_held_out_figures",
    "test_calibrate_by_hand_and_refused_for_multi_label",
    "test_the_head_phase_averages_copies_of_a_linear_head_and_says_when_it_cannot",
    "test_gradual_unfreezing_opens_one_more_block_per_stage", "test_keep_last_and_patience",
    "test_fit_that_continues_a_trained_model_does_not_refit",
    "test_head_search_shares_one_feature_extraction_and_resumes", "test_lr_find_command_writes_plot_and_json",
    "test_phase_with_random_layers_below_the_boundary_is_not_cached",
    "test_trainable_module_fine_tunes_its_own_variables",
    "test_real_mobilenet_exported_as_hub_module_gives_the_same_features",
    "test_head_only_trials_build_the_backbone_once_and_score_on_cached_features",
    "test_saved_model_signatures_match_the_keras_model", "test_restart_starts_over",
    "test_discriminative_learning_rates_fall_towards_the_stem_and_the_run_still_saves",
    "test_refit_auto_and_refit_true_choose_where_it_applies",
    "test_a_second_train_run_on_the_folder_is_refused_while_the_first_holds_it",
    "test_a_worker_other_than_the_chief_keeps_nothing", "test_saved_model_runs_in_a_tf1_session_as_tf_serving_loads_it",
    "test_augmentation_and_checkpoints_turn_caching_off",
    "test_a_fine_tune_phase_that_only_worsens_leaves_the_head_weights",
    "test_keep_best_phase_compares_phase_ends_only",
    # KerasHub timm folders: the real EfficientNet-Lite0's ImageNet classifier (~3-4 s) and its fine-tuning on
    # stamps5 (~25 s), fine-tuning a random ResNet-18 (~7 s)
    "test_real_lite0_classifies_scikit_image_photos", "test_real_lite0_transfers_to_stamps5",
    "test_random_timm_resnet18_fine_tunes_saves_and_loads",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
