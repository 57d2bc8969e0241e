"""Loaders: every image mode decodes right, bad files are found up front, pipelines behave."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import write_bad_files, write_image_folder
from PIL import Image

import transferkit as tk
from transferkit.data import class_weights, find_images, load_image, make_dataset, read_image, resize_image


def _only(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_modes_become_rgb(tmp_path):
    gray = _only(tmp_path / "gray.png", Image.fromarray(np.full((8, 8), 200, np.uint8), "L"))
    sixteen = _only(tmp_path / "sixteen.png", Image.fromarray(np.full((8, 8), 65535, np.uint16)))
    palette = _only(tmp_path / "palette.gif", Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"))
    bmp = _only(tmp_path / "plain.bmp", Image.new("RGB", (8, 8), (10, 20, 30)))
    for path, pixel in ((gray, (200, 200, 200)), (sixteen, (255, 255, 255)), (palette, (0, 0, 255)),
                        (bmp, (10, 20, 30))):
        image = read_image(path)
        assert image.mode == "RGB"
        assert image.getpixel((4, 4)) == pixel, path.name


def test_transparency_is_composited_onto_the_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    path = _only(tmp_path / "cutout.png", Image.fromarray(rgba, "RGBA"))
    assert read_image(path).getpixel((4, 6)) == (255, 255, 255)
    assert read_image(path, background=(0, 128, 0)).getpixel((4, 6)) == (0, 128, 0)
    assert read_image(path).getpixel((4, 1)) == (255, 0, 0)
    pal = Image.fromarray(rgba, "RGBA").convert("P")  # palette with a transparent index
    pal_path = tmp_path / "cutout_p.png"
    pal.save(pal_path, transparency=pal.getpixel((4, 6)))
    assert read_image(pal_path, background=(0, 0, 0)).getpixel((4, 6)) == (0, 0, 0)


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = read_image(path)
    assert upright.size == (10, 20)
    r, _g, b = upright.getpixel((5, 3))
    assert b > 200 and r < 60  # the blue half is now on top


def test_resize_modes_keep_or_change_the_aspect_ratio():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    padded = resize_image(wide, 16, mode="pad", background=(0, 255, 0))
    assert padded.shape == (16, 16, 3)
    assert tuple(padded[0, 8]) == (0, 255, 0) and tuple(padded[8, 8]) == (255, 0, 0)
    assert tuple(resize_image(wide, 16, mode="stretch")[0, 8]) == (255, 0, 0)
    assert tuple(resize_image(wide, 16, mode="crop")[0, 0]) == (255, 0, 0)
    with pytest.raises(tk.ConfigError, match="resize"):
        resize_image(wide, 16, mode="squash")


def test_bad_files_are_reported_by_name_in_one_warning(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=4)
    write_bad_files(root / "red")
    with pytest.warns(tk.SkippedFilesWarning) as record:
        files = tk.scan_folder(root)
    assert len(record) == 1
    message = str(record[0].message)
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg", "corrupt.png", "readme.txt"):
        assert name in message
    assert "empty file" in message and "not an image" in message
    assert len(files) == 12 and len(files.skipped) == 5
    assert all("red" in p or "blue" in p or "green" in p for p in files.paths)
    with pytest.raises(tk.DataError, match="strict=True"):
        tk.scan_folder(root, strict=True)


def test_clean_folder_gives_no_warning(image_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = tk.scan_folder(image_folder)
    assert files.class_names == ("blue", "green", "red")
    assert files.class_counts().tolist() == [12, 12, 12]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(tk.DataError, match="does not exist"):
        tk.scan_folder(tmp_path / "nowhere")
    single = write_image_folder(tmp_path / "single", per_class=2, colors={"cat": (1, 2, 3)})
    with pytest.raises(tk.DataError, match="at least two class sub-folders.*'cat'"):
        tk.scan_folder(single)
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "zebra").mkdir()
    with pytest.raises(tk.DataError, match="zebra.*no usable images"):
        tk.scan_folder(root)


def test_csv_loader_and_its_errors(tmp_path, image_folder):
    files = tk.scan_folder(image_folder)
    csv_path = image_folder / "labels.csv"
    pairs = zip(files.paths, files.labels)
    lines = ["file,kind"] + [f"{p.split('images/')[1]},{files.class_names[y]}" for p, y in pairs]
    csv_path.write_text("\n".join(lines))
    read = tk.read_csv(csv_path, path_column="file", label_column="kind")
    assert read.class_names == files.class_names and len(read) == len(files)
    with pytest.raises(tk.DataError, match="no column 'path'.*Columns found"):
        tk.read_csv(csv_path)
    csv_path.write_text("\n".join([*lines, "red/missing.png,red"]))
    with pytest.raises(tk.DataError, match=r"row \d+: image file .*missing\.png"):
        tk.read_csv(csv_path, path_column="file", label_column="kind")
    with pytest.raises(tk.DataError, match="does not exist"):
        tk.read_csv(tmp_path / "nope.csv")


def test_csv_multi_label(tmp_path, image_folder):
    files = tk.scan_folder(image_folder)
    rows = ["path,label"] + [f"{p},{'warm bright' if 'red' in p else 'cold'}" for p in files.paths]
    (tmp_path / "multi.csv").write_text("\n".join(rows))
    multi = tk.read_csv(tmp_path / "multi.csv", multi_label=True)
    assert multi.multi_label and multi.class_names == ("bright", "cold", "warm")
    assert multi.labels.sum(axis=1).max() == 2


def test_stratified_split_is_seeded_and_keeps_proportions():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2)
    train, val = tk.stratified_split(labels, validation_fraction=0.2, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val]).tolist() == [10, 2, 1]
    again = tk.stratified_split(labels, validation_fraction=0.2, seed=3)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, tk.stratified_split(labels, validation_fraction=0.2, seed=4)[1])
    with pytest.raises(tk.ConfigError, match="validation_split"):
        tk.stratified_split(labels, validation_fraction=1.0)


def test_class_weights_balance_the_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)


def test_load_folder_pipelines(image_folder):
    data = tk.load_folder(image_folder, image_size=16, validation_split=0.25, batch_size=4,
                          augment=tk.Augment(), seed=1)
    assert (data.num_train, data.num_validation) == (27, 9)
    images, _labels = next(iter(data.train))
    assert images.shape == (4, 16, 16, 3) and images.dtype.name == "float32"
    assert float(images.numpy().max()) > 1.0  # raw 0–255 pixels, not rescaled
    val_a = np.concatenate([x.numpy() for x, _ in data.validation])
    val_b = np.concatenate([x.numpy() for x, _ in data.validation])
    np.testing.assert_array_equal(val_a, val_b)  # no augmentation, fixed order
    first = np.concatenate([y.numpy() for _, y in data.train])
    second = np.concatenate([y.numpy() for _, y in data.train])
    assert sorted(first.tolist()) == sorted(second.tolist()) and not np.array_equal(first, second)
    expected = load_image(data.validation_files.paths[0], image_size=16)
    np.testing.assert_array_equal(val_a[0], expected)


def test_from_arrays_handles_grayscale_and_names():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 12, 12), dtype=np.uint8)
    labels = np.array(["shirt", "shoe"] * 10)
    data = tk.from_arrays(images, labels, image_size=16, validation_split=0.2, batch_size=8)
    assert data.class_names == ("shirt", "shoe")
    x, _ = next(iter(data.validation))
    assert x.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(x.numpy()[..., 0], x.numpy()[..., 2])
    with pytest.raises(tk.DataError, match="shape"):
        tk.from_arrays(np.zeros((4, 5)), [0, 1, 0, 1])
    with pytest.raises(tk.DataError, match="labels"):
        tk.from_arrays(images, labels[:3])


def test_from_arrays_numbers_names_by_the_given_class_names():
    names = np.array(["dog", "cat", "cat", "dog"] * 3)  # not in sorted order, like class_names below
    images = np.stack([np.full((4, 4, 3), 10 if n == "dog" else 200, np.uint8) for n in names])
    data = tk.from_arrays(images, names, class_names=["dog", "cat"], image_size=4, validation_split=0.0,
                          batch_size=64)
    assert data.class_names == ("dog", "cat")
    x, y = next(iter(data.train_ordered))
    first_pixel, labels = x.numpy()[:, 0, 0, 0], y.numpy()
    assert set(first_pixel[labels == 0]) == {10.0} and set(first_pixel[labels == 1]) == {200.0}  # dogs are 0
    unknown = np.array([*names[:-2], "cow", "bird"])
    with pytest.raises(tk.DataError, match=r"Labels 'bird', 'cow' are not in class_names\. "
                                           r"Known classes: 'dog', 'cat'"):
        tk.from_arrays(images, unknown, class_names=["dog", "cat"])
    with pytest.raises(tk.DataError, match=r"\[0, 1\] for 2 class names\. Received labels outside: -1, 2"):
        tk.from_arrays(images, [0, 1, 2, -1] * 3, class_names=["dog", "cat"])
    with pytest.raises(tk.DataError, match=r"shape \(n,\).*argmax"):
        tk.from_arrays(images, np.eye(2)[[0, 1] * 6])
    with pytest.raises(tk.DataError, match="whole class indices"):
        tk.from_arrays(images, [0.5, 1.0] * 6)
    with pytest.raises(tk.DataError, match="more than once"):
        tk.from_arrays(images, names, class_names=["dog", "dog"])
    indices = tk.from_arrays(images, np.array([1, 0] * 6, dtype=object), class_names=["dog", "cat"], image_size=4)
    assert indices.num_train + indices.num_validation == 12  # integer labels in an object array are indices


def test_non_utf8_file_and_class_names_are_used(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    folder = os.fsencode(root)
    try:  # Latin-1 bytes, as an old camera or a Windows zip leaves them: not valid UTF-8
        Image.new("RGB", (8, 8), (220, 30, 30)).save(os.path.join(folder, b"red", b"caf\xe9.png"), format="PNG")
        os.mkdir(os.path.join(folder, b"ni\xf1o"))
    except OSError as error:
        pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    for i in range(2):
        Image.new("RGB", (8, 8), (9, 9, 9)).save(os.path.join(folder, b"ni\xf1o", b"%d.png" % i), format="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # used, not skipped
        data = tk.load_folder(root, image_size=8, validation_split=0.0, batch_size=64)
    assert data.class_names == ("blue", "green", "ni\\xf1o", "red")  # printable, and writable as UTF-8
    assert any(os.fsencode(p).endswith(b"caf\xe9.png") for p in data.train_files.paths)
    labels = np.concatenate([y.numpy() for _, y in data.train])
    assert np.bincount(labels).tolist() == [2, 2, 2, 3]


def test_augment_validates_options():
    with pytest.raises(tk.ConfigError, match="flip"):
        tk.Augment(flip="diagonal")
    with pytest.raises(tk.ConfigError, match="rotation"):
        tk.Augment(rotation=2.0)


def test_loader_options_match_the_settings_fields():
    import dataclasses

    from transferkit.data._pipelines import PipelineOptions

    assert set(PipelineOptions.__annotations__) == {f.name for f in dataclasses.fields(tk.PipelineSettings)}


def test_pipeline_options_keep_what_worked_before(image_folder):
    files = tk.scan_folder(image_folder)
    data = tk.from_files(files, image_size=16, cache=False, seed=None, background=(255.0, 255.0, 255.0))
    assert data.settings.background == (255, 255, 255) and data.settings.seed is None
    assert data.num_train + data.num_validation == 36
    with pytest.raises(tk.ConfigError, match="needs image_size"):
        make_dataset(files)  # the size of a pipeline is never guessed
    with pytest.raises(tk.ConfigError, match="does not split"):
        make_dataset(files, image_size=16, validation_split=0.2)
    batches = make_dataset(files, image_size=16, batch_size=36)
    assert next(iter(batches))[0].shape == (36, 16, 16, 3)


def test_loader_options_are_one_settings_object(image_folder):
    data = tk.load_folder(image_folder, image_size=16, batch_size=4, seed=2)
    assert data.settings == tk.PipelineSettings(image_size=16, batch_size=4, seed=2)
    with pytest.raises(tk.ConfigError, match="batch_sise.*Did you mean 'batch_size'"):
        tk.load_folder(image_folder, batch_sise=4)
    with pytest.raises(tk.ConfigError, match="image_size"):
        tk.PipelineSettings(image_size=0)
    with pytest.raises(tk.ConfigError, match="background"):
        tk.PipelineSettings(background=(0, 0))
    with pytest.raises(tk.ConfigError, match="resize"):
        tk.from_arrays(np.zeros((4, 8, 8)), [0, 1, 0, 1], resize="pad")


def test_find_images_follows_the_folder_rules(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "red" / ".hidden.png").write_bytes(b"not an image, and hidden")
    write_bad_files(root / "blue")
    with pytest.warns(tk.SkippedFilesWarning, match="notes.jpg") as record:
        found = find_images(root)
    assert len(found) == 6 and not any(".hidden" in p for p in found)
    assert ".hidden" not in str(record[0].message)
    assert find_images(root / "red" / "1.png") == (str(root / "red" / "1.png"),)
    with pytest.raises(tk.DataError, match="does not exist"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(tk.DataError, match="no usable image"):
        find_images(write_bad_files(tmp_path / "junk"))
