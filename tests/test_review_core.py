"""The numerical core of `transferkit review`: label issues, near duplicates, outliers, image problems.

Pure numpy on synthetic data, except one test that measures duplicate similarities on real
pretrained features (it needs ../shared and takes about 10 s: a SLOW_TESTS candidate).
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from conftest import SHARED_WEIGHTS, STAMPS5, needs_shared
from PIL import Image

from transferkit._errors import ConfigError, DataError
from transferkit._review._confident import (
    LabelIssues,
    confident_joint,
    find_label_issues,
    label_scores,
    out_of_fold,
    thresholds,
)
from transferkit._review._duplicates import THRESHOLD, leaks, near_duplicates
from transferkit._review._outliers import feature_outliers, image_problems, neighbour_distances


def clusters(counts: list[int], *, dim: int = 16, separation: float = 4.0, flips: float = 0.1, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters (one per class) with a fraction of labels flipped to another class.

    Returns features, true labels, given (noisy) labels, and the rows flipped.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(counts)), counts)
    features = (centres[truth] + rng.normal(size=(len(truth), dim))).astype(np.float32)
    flipped = rng.choice(len(truth), int(flips * len(truth)), replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, len(counts), len(flipped))) % len(counts)
    return features, truth, given, flipped


def precision_recall(found: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    hits = len(set(found.tolist()) & set(planted.tolist()))
    return hits / max(1, len(found)), hits / len(planted)


# -- confident learning -------------------------------------------------------------------------


@pytest.mark.parametrize("ranking", ["self_confidence", "normalized_margin"])
def test_planted_label_flips_are_found_with_the_true_class_suggested(ranking: str) -> None:
    features, truth, given, flipped = clusters([80, 80, 80, 80])
    probabilities = out_of_fold(features, given, 4)
    issues = find_label_issues(given, probabilities, ranking=ranking)
    precision, recall = precision_recall(issues.indices, flipped)
    assert precision >= 0.9 and recall >= 0.95, (precision, recall)
    caught = np.isin(issues.indices, flipped)
    # (a few flips land between two clusters: their true class is not the obvious suggestion)
    assert np.mean(issues.suggested[caught] == truth[issues.indices[caught]]) >= 0.85
    # most suspect first, and the scores are the ranking's scores of those rows
    assert np.all(np.diff(issues.scores) >= 0)
    np.testing.assert_allclose(issues.scores, label_scores(given, probabilities, ranking=ranking)[issues.indices])
    assert not np.any(issues.suggested == given[issues.indices])
    assert len(issues) == len(np.unique(issues.indices))


def test_imbalanced_classes_keep_precision_and_recall() -> None:
    features, _, given, flipped = clusters([150, 60, 30, 20], seed=1)
    issues = find_label_issues(given, out_of_fold(features, given, 4))
    precision, recall = precision_recall(issues.indices, flipped)
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
    # the calibrated joint: rows are the given labels' counts, the whole is the number of images
    np.testing.assert_allclose(issues.confident_joint.sum(axis=1), np.bincount(given, minlength=4))
    assert issues.confident_joint.sum() == pytest.approx(len(given))


def test_clean_labels_give_few_issues() -> None:
    features, _, given, _ = clusters([60, 60, 60], flips=0.0, separation=6.0)
    issues = find_label_issues(given, out_of_fold(features, given, 3))
    assert len(issues) <= 2


def test_confident_joint_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.2, 0.8]])
    t = thresholds(labels, p)
    np.testing.assert_allclose(t, [(0.9 + 0.8 + 0.1) / 3, 0.75])
    # row 2 is labelled 0 but passes only class 1's threshold; row 3 (0.7 < 0.75) passes none
    np.testing.assert_array_equal(confident_joint(labels, p, calibrate=False), [[2, 1], [0, 1]])
    calibrated = confident_joint(labels, p)
    np.testing.assert_allclose(calibrated, [[2, 1], [0, 2]])
    issues = find_label_issues(labels, p)
    assert isinstance(issues, LabelIssues)
    np.testing.assert_array_equal(issues.indices, [2])
    np.testing.assert_array_equal(issues.suggested, [1])
    np.testing.assert_allclose(issues.scores, [0.1])
    margin = find_label_issues(labels, p, ranking="normalized_margin")
    np.testing.assert_allclose(margin.scores, [0.1 - 0.9])


def test_prune_by_noise_rate_flags_the_largest_margins() -> None:
    # two images labelled 0 lean to class 1, but only row 3 reaches class 1's threshold (0.767):
    # the joint estimates one wrong label in row 0 of the joint, so one image, the larger margin
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    p = np.array([[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.2, 0.8], [0.4, 0.6],
                  [0.1, 0.9], [0.2, 0.8], [0.4, 0.6]])
    np.testing.assert_array_equal(confident_joint(labels, p, calibrate=False), [[3, 1], [0, 2]])
    np.testing.assert_allclose(confident_joint(labels, p), [[3.75, 1.25], [0, 3]])
    issues = find_label_issues(labels, p, rule="prune_by_noise_rate")
    np.testing.assert_array_equal(issues.indices, [3])


def test_the_threshold_rule_flags_below_a_share_of_the_class_threshold() -> None:
    # class 0's threshold is (0.95 + 0.9 + 0.85 + 0.2 + 0.4) / 5 = 0.66; class 1's (0.9 + 0.8 + 0.6) / 3 = 0.767
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    p = np.array([[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.2, 0.8], [0.4, 0.6],
                  [0.1, 0.9], [0.2, 0.8], [0.4, 0.6]])
    np.testing.assert_allclose(thresholds(labels, p), [0.66, 2.3 / 3])
    # 0.3 of them: 0.198 and 0.23: no row is below (row 3 has 0.2, just above 0.198)
    assert len(find_label_issues(labels, p)) == 0
    # 0.7 of them: 0.462 and 0.537: rows 3 and 4 (0.2, 0.4), most suspect first; not row 7 (0.6)
    issues = find_label_issues(labels, p, share=0.7)
    np.testing.assert_array_equal(issues.indices, [3, 4])
    np.testing.assert_array_equal(issues.suggested, [1, 1])
    np.testing.assert_allclose(issues.scores, [0.2, 0.4])
    assert len(find_label_issues(labels, p, share=0.0)) == 0
    np.testing.assert_array_equal(find_label_issues(labels, p, share=1.0).indices, [3, 4, 7])  # below the mean
    with pytest.raises(ConfigError, match="share"):
        find_label_issues(labels, p, share=1.5)
    with pytest.raises(ConfigError, match="rule"):
        find_label_issues(labels, p, rule="both")


def test_a_class_with_one_image_and_an_empty_class_do_not_crash() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(31, 8)).astype(np.float32)
    labels = np.array([0] * 15 + [1] * 15 + [2])  # class 2 has one image, class 3 none
    p = out_of_fold(features, labels, 4)
    assert p.shape == (31, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[-1, 2] < 0.1  # predicted by a head that never saw class 2
    issues = find_label_issues(labels, p)
    assert np.isfinite(issues.confident_joint).all()
    assert issues.confident_joint[3].sum() == 0


def test_out_of_fold_uses_fewer_folds_for_a_rare_class() -> None:
    features, _, given, _ = clusters([40, 3], flips=0.0, seed=2)
    p = out_of_fold(features, given, 2, folds=10)
    assert p.shape == (43, 2) and np.isfinite(p).all()
    assert (p.argmax(axis=1) == given).mean() > 0.9


def test_out_of_fold_predictions_are_held_out() -> None:
    # pure noise: a head scoring its own training images would look confident; held out, it cannot
    rng = np.random.default_rng(3)
    features = rng.normal(size=(120, 60)).astype(np.float32)
    labels = rng.integers(0, 2, 120)
    p = out_of_fold(features, labels, 2)
    assert 0.3 < (p.argmax(axis=1) == labels).mean() < 0.7


def test_mistakes_are_explained() -> None:
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    with pytest.raises(ConfigError, match="normalized_margin"):
        find_label_issues([0, 1], p, ranking="margin")
    with pytest.raises(DataError, match="logits"):
        find_label_issues([0, 1], np.array([[2.0, 1.0], [0.5, 3.0]]))
    with pytest.raises(DataError, match=r"labels of shape \(2,\)"):
        find_label_issues([0, 1, 1], p)
    with pytest.raises(DataError, match="from 0 to 1"):
        find_label_issues([0, 2], p)
    with pytest.raises(DataError, match="from 0 to 2"):
        out_of_fold(np.zeros((4, 3)), [0, 1, 3, 1], 3)
    with pytest.raises(ConfigError, match="folds"):
        out_of_fold(np.zeros((4, 3)), [0, 1, 0, 1], 2, folds=1)


# -- near duplicates ----------------------------------------------------------------------------


def brute_force(a: np.ndarray, b: np.ndarray | None, threshold: float) -> set[tuple[int, int]]:
    left = a / np.linalg.norm(a, axis=1, keepdims=True)
    right = left if b is None else b / np.linalg.norm(b, axis=1, keepdims=True)
    similarity = left @ right.T
    return {(i, j) for i, j in zip(*np.nonzero(similarity >= threshold)) if b is not None or i < j}


def with_copies(n: int, dim: int, seed: int) -> np.ndarray:
    """Random embeddings where some rows are noisy or rescaled copies of others."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    for target in range(1, n, 4):
        x[target] = x[rng.integers(target)] * rng.uniform(0.5, 2.0) + rng.normal(0, 0.2, dim)
    return x


@pytest.mark.parametrize("block", [1, 7, 64, 2048])
def test_blockwise_duplicates_equal_brute_force(block: int) -> None:
    a = with_copies(50, 12, seed=0)
    for threshold in (0.5, 0.9):
        pairs = near_duplicates(a, threshold=threshold, block=block)
        assert {(i, j) for i, j, _ in pairs} == brute_force(a, None, threshold)
        assert all(i < j for i, j, _ in pairs)
        similarities = [s for _, _, s in pairs]
        assert similarities == sorted(similarities, reverse=True)
        left = a / np.linalg.norm(a, axis=1, keepdims=True)
        for i, j, s in pairs:
            assert s == pytest.approx(left[i] @ left[j], abs=1e-5)


@pytest.mark.parametrize("block", [3, 2048])
def test_across_two_sets_pairs_each_row_of_a_with_rows_of_b(block: int) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(23, 10))
    b = np.concatenate([rng.normal(size=(15, 10)), a[[4, 9]] * 3.0, a[[4]] + 0.01])  # copies at 15, 16, 17
    pairs = near_duplicates(a, b, threshold=0.99, block=block)
    assert {(i, j) for i, j, _ in pairs} == brute_force(a, b, 0.99) == {(4, 15), (9, 16), (4, 17)}
    assert pairs[0][2] == pytest.approx(1.0) and pairs[0][:2] in {(4, 15), (9, 16)}


def copy_at(source: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """A vector whose cosine similarity with ``source`` is exactly ``similarity``."""
    unit = source / np.linalg.norm(source)
    other = rng.normal(size=source.shape)
    other -= (other @ unit) * unit
    other /= np.linalg.norm(other)
    return similarity * unit + np.sqrt(1 - similarity ** 2) * other


def brute_force_leaks(a: np.ndarray, b: np.ndarray, threshold: float, margin: float, gap: float) -> set:
    s = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    found = {(i, j) for i, j in zip(*np.nonzero(s >= threshold - 1e-6))}
    for j in range(s.shape[1]):
        order = np.argsort(-s[:, j])
        i = order[0]
        if s[i, j] >= threshold - margin - 1e-6 and s[i, j] - s[order[1], j] >= gap and s[i].argmax() == j:
            found.add((int(i), j))
    return {(int(i), int(j)) for i, j in found}


@pytest.mark.parametrize("block", [1, 4, 2048])
def test_leaks_add_clear_mutual_nearest_neighbours_below_the_threshold(block: int) -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(30, 64))
    b = rng.normal(size=(12, 64))
    b[0] = copy_at(a[3], 0.85, rng)  # below 0.90, one clear match: a leak
    b[1] = copy_at(a[7], 0.95, rng)  # above 0.90: a leak by the threshold alone
    b[2] = copy_at(a[10], 0.75, rng)  # below 0.80: not a leak
    a[20] = copy_at(a[11], 0.999, rng)  # a[11] and a[20] are near-identical data images...
    b[3] = copy_at(a[11], 0.85, rng)  # ...so b[3] has no clear nearest neighbour: not a leak
    pairs = leaks(a, b, block=block)
    found = {(i, j) for i, j, _ in pairs}
    assert (3, 0) in found and (7, 1) in found
    assert not any(j in (2, 3) for _, j in found)
    assert found == brute_force_leaks(a, b, THRESHOLD, 0.10, 0.04)
    assert {(i, j) for i, j, _ in near_duplicates(a, b, block=block)} <= found
    assert [s for _, _, s in pairs] == sorted((s for _, _, s in pairs), reverse=True)
    # margin 0: the threshold alone
    assert {(i, j) for i, j, _ in leaks(a, b, margin=0.0, block=block)} == {
        (i, j) for i, j, _ in near_duplicates(a, b, block=block)}
    # the best match of a[3] must be b[0] for the pair to count (mutual): a closer b row takes it
    b2 = np.concatenate([b, copy_at(a[3], 0.88, rng)[None]])
    found2 = {(i, j) for i, j, _ in leaks(a, b2, block=block)}
    assert (3, 0) not in found2 and (3, 12) in found2


def test_exact_copies_reach_a_threshold_of_one_and_zero_rows_match_nothing() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(9, 33)).astype(np.float32)
    a[5] = a[2]
    a[7] = 0.0
    a[8] = 0.0
    assert [(i, j) for i, j, _ in near_duplicates(a, threshold=1.0)] == [(2, 5)]
    assert all(s <= 1.0 for _, _, s in near_duplicates(a, threshold=0.0))
    assert not any({i, j} & {7, 8} for i, j, _ in near_duplicates(a, threshold=0.001))
    assert {(0, 7, 0.0), (7, 8, 0.0)} <= set(near_duplicates(a, threshold=0.0))


def test_duplicate_mistakes_are_explained() -> None:
    with pytest.raises(DataError, match="same number of features"):
        near_duplicates(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(DataError, match="finite"):
        near_duplicates(np.array([[1.0, np.nan]]))
    with pytest.raises(DataError, match=r"\(images, dim\)"):
        near_duplicates(np.ones(5))
    with pytest.raises(ConfigError, match="threshold"):
        near_duplicates(np.ones((3, 4)), threshold=1.5)
    with pytest.raises(ConfigError, match="block"):
        near_duplicates(np.ones((3, 4)), block=0)


# -- outliers and image problems ----------------------------------------------------------------


def test_a_planted_far_point_scores_highest() -> None:
    features, _, labels, _ = clusters([40, 40, 40], flips=0.0, dim=8, separation=6.0, seed=4)
    far = np.full(8, -20.0, dtype=np.float32)  # nowhere near any cluster
    features = np.concatenate([features, far[None]])
    labels = np.append(labels, 1)
    scores = feature_outliers(features, labels, k=5)
    assert scores.shape == (121,) and int(np.argmax(scores)) == 120
    assert np.all((scores >= 0) & (scores <= 2))


def test_a_mislabelled_point_is_far_from_its_own_class_only() -> None:
    features, _, labels, _ = clusters([40, 40], flips=0.0, dim=8, separation=6.0, seed=5)
    labels = labels.copy()
    labels[3] = 1  # a class-0 image labelled 1
    own, any_label = neighbour_distances(features, labels, k=5)
    assert int(np.argmax(own)) == 3
    assert any_label[3] < np.quantile(any_label, 0.9)


@pytest.mark.parametrize("block", [1, 4, 2048])
def test_blockwise_neighbours_equal_brute_force(block: int) -> None:
    rng = np.random.default_rng(6)
    features = rng.normal(size=(17, 5))
    labels = np.array([0] * 9 + [1] * 7 + [2])  # class 2 alone: no own neighbours
    own, any_label = neighbour_distances(features, labels, k=3, block=block)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    np.testing.assert_allclose(any_label, np.sort(distance, axis=1)[:, :3].mean(axis=1), atol=1e-5)
    for i in range(16):
        same = distance[i, labels == labels[i]]
        np.testing.assert_allclose(own[i], np.sort(same)[:3].mean(), atol=1e-5)
    assert np.isnan(own[16])
    scores = feature_outliers(features, labels, k=3, block=block)
    assert scores[16] == pytest.approx(any_label[16])
    np.testing.assert_allclose(scores[:16], 0.5 * (own[:16] + any_label[:16]))


def test_tiny_blank_and_unreadable_images_are_flagged_with_reasons(tmp_path) -> None:
    rng = np.random.default_rng(7)
    photo = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    tiny = rng.integers(0, 256, (20, 100, 3), dtype=np.uint8)
    blank = np.full((64, 64, 3), 200, dtype=np.uint8)
    nearly = np.clip(200 + rng.normal(0, 1, (64, 64)), 0, 255).astype(np.uint8)  # grayscale, std about 1
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(blank).save(tmp_path / "blank.jpg", quality=75)
    Image.fromarray(tiny).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    transparent = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # empty cut-out: white once composited
    transparent.save(tmp_path / "transparent.png")
    items = [photo, tiny, blank, nearly, Image.fromarray(photo), tmp_path / "photo.png", tmp_path / "blank.jpg",
             str(tmp_path / "tiny.png"), tmp_path / "broken.jpg", tmp_path / "transparent.png"]
    found = image_problems(items)
    problems = dict(found)
    assert [i for i, _ in found] == [1, 2, 3, 6, 7, 8, 9]
    assert "too small (100×20 pixels" in problems[1]
    assert all("blank or nearly uniform" in problems[i] for i in (2, 3, 6, 9))
    assert "too small" in problems[7] and "blank" not in problems[7]
    assert problems[8].startswith("cannot be read: ") and "not an image" in problems[8]
    # a batch array is n images, one array one image; the thresholds are options
    assert [i for i, _ in image_problems(np.stack([photo[:64, :64], blank]))] == [1]
    assert [i for i, _ in image_problems(blank)] == [0]
    assert image_problems([tiny], min_side=16) == []
    assert image_problems([nearly], min_std=0.5) == []
    with pytest.raises(ConfigError, match="min_side"):
        image_problems([photo], min_side=0)


# -- real features: what the default duplicate threshold means -----------------------------------


def _copies(image: Image.Image) -> dict[str, Image.Image]:
    def jpeg(quality: int) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    def scaled(factor: float) -> Image.Image:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.Resampling.LANCZOS)

    def cropped(fraction: float) -> Image.Image:
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    return {"jpeg q90": jpeg(90), "jpeg q75": jpeg(75), "resized 75%": scaled(0.75), "resized 50%": scaled(0.5),
            "cropped 3%": cropped(0.03), "cropped 5%": cropped(0.05)}


@needs_shared
def test_real_copies_score_above_the_default_threshold_and_different_photos_below(tmp_path) -> None:
    import keras

    from transferkit.data._images import load_image, read_image, resize_image

    network = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(224, 224, 3),
                                           pooling="avg")
    network.load_weights(SHARED_WEIGHTS / "mobilenet_v1_1.0_224_imagenet_notop.weights.h5")

    def features(pixels: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(pixels).astype(np.float32) / 127.5 - 1.0
        return network.predict(batch, batch_size=64, verbose=0)

    paths = sorted(STAMPS5.rglob("*.png"))
    originals = features([load_image(p, image_size=224) for p in paths])
    # different photos: only the one recoloured drawing (the same apple in green and in red) reaches it
    recoloured = {(paths[i].name, paths[j].name) for i, j, _ in near_duplicates(originals)}
    assert recoloured <= {("fruit__apple_green.png", "fruit__apple_red.png")}
    others = [s for i, j, s in near_duplicates(originals, threshold=0.5) if "apple_green" not in paths[i].name]
    assert max(others) < THRESHOLD - 0.01

    # an exact copy (another file with the same bytes) scores 1
    shutil.copy(paths[0], tmp_path / "copy.png")
    copy = features([load_image(tmp_path / "copy.png", image_size=224)])
    assert near_duplicates(originals[:1], copy, threshold=1.0)[0][2] == pytest.approx(1.0, abs=1e-6)

    # light edits of every 8th photo (any size), and of the photos at least 224 pixels on the shorter side
    images = [read_image(p) for p in paths]
    large = [i for i, image in enumerate(images) if min(image.size) >= 224]
    every_size = list(range(0, len(paths), 8))
    measured = {}
    copies = {i: _copies(images[i]) for i in sorted(set(every_size) | set(large))}
    for name in copies[0]:
        chosen = large if name in ("jpeg q75", "resized 50%") else sorted(copies)
        edited = features([resize_image(copies[i][name], 224) for i in chosen])
        similarity = {(i, j): s for i, j, s in near_duplicates(originals[chosen], edited, threshold=-1.0)}
        own = np.array([similarity[(k, k)] for k in range(len(chosen))])
        measured[name] = (round(float(own.min()), 3), round(float(np.median(own)), 3))
        assert own.min() >= THRESHOLD, (name, measured[name])
        # and each edit's nearest original is its own
        assert all(max(similarity[(m, k)] for m in range(len(chosen))) == similarity[(k, k)]
                   for k in range(len(chosen)))
    print("min, median similarity of each kind of copy:", measured)


def test_pairs_of_different_synthetic_rows_stay_below_the_default() -> None:
    rng = np.random.default_rng(8)
    assert near_duplicates(rng.normal(size=(200, 64))) == []
    assert pytest.approx(0.90) == THRESHOLD  # the default the real-features test measures
    assert near_duplicates(np.ones((3, 4))) == [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 1.0)]
