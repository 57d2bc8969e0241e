"""A corpus of awkward inputs, each with one defined outcome: used (and decoded right), skipped
with a named reason, ignored (hidden files), or a DataError that says what to fix.

docs/data.md ("Awkward files") is the table of these outcomes; keep the two in step.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

import transferkit as tk
from transferkit.data import _images, load_image, make_dataset, read_image

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)
LIMIT = 40_000  # Pillow's MAX_IMAGE_PIXELS while the corpus is read: 300×300 is above twice it
NON_UTF8_CLASS = "ni\\xf1o"  # the printable class name of the folder b"ni\xf1o"


def fs_path(folder: Path, name: bytes) -> Path:
    """``folder/name`` for a file name given as raw bytes (not necessarily UTF-8)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, depth: int, color_type: int, pixels: bytes) -> bytes:
    """A PNG written byte by byte: for headers Pillow will not write (16-bit alpha, huge sizes)."""
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(pixels))
            + png_chunk(b"IEND", b""))


def gray_alpha_16(size: int = 8) -> bytes:
    """16-bit gray + alpha: white, top half opaque, bottom half fully transparent."""
    rows = (b"\0" + struct.pack(">HH", 65535, 0 if y >= size // 2 else 65535) * size for y in range(size))
    return raw_png(size, size, 16, 4, b"".join(rows))


def ycck_jpeg(color: tuple[int, int, int]) -> bytes:
    """A 4-channel JPEG whose Adobe marker says YCCK (transform 2), decoding to about ``color``."""
    ycc = Image.new("RGB", (8, 8), color).convert("YCbCr")
    buffer = io.BytesIO()
    Image.merge("CMYK", (*ycc.split(), Image.new("L", (8, 8), 0))).save(buffer, "JPEG", quality=95)
    data = bytearray(buffer.getvalue())
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2  # the transform byte: 0 = CMYK, 1 = YCbCr, 2 = YCCK
    return bytes(data)


def rotated_jpeg(path: Path) -> Path:
    """Stored 20 wide × 10 high, blue on the left; EXIF orientation 6 says: turn 90° clockwise."""
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def sixteen_bit_with_trns(path: Path) -> Path:
    """16-bit gray, top half dark, bottom half the value a tRNS chunk marks transparent."""
    array = np.full((8, 8), 1000, np.uint16)
    array[4:] = 40000
    Image.fromarray(array).save(path, transparency=40000)
    return path


def palette_with_trns(path: Path) -> Path:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (*RED, 255)
    image = Image.fromarray(rgba, "RGBA").convert("P")
    image.save(path, transparency=image.getpixel((4, 6)))
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (8, 8), (0, 200, 200, 0)).save(path, quality=95)  # magenta + yellow: red
    return path


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def solid(path: Path, color: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 8), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


USED, SKIPPED = "used", "skipped"


def build_corpus(base: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The awkward folder: ``(root, {path relative to root: (outcome, reason fragment)})``.

    Hidden files are absent from the map: they must appear neither as used nor as skipped.
    """
    root = base / "data"
    cat, dog = root / "cat", root / "dog"
    outside = base / "outside"
    expected: dict[str, tuple[str, str]] = {}

    def used(path: Path) -> None:
        expected[os.path.relpath(path, root)] = (USED, "")

    def skipped(path: Path, reason: str) -> None:
        expected[os.path.relpath(path, root)] = (SKIPPED, reason)

    for folder, color in ((cat, RED), (dog, GREEN)):
        for i in range(3):
            used(solid(folder / f"{i}.png", color))
    used(solid(cat / "one_pixel.png", BLUE, size=(1, 1)))
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(cat / "animated.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    used(cat / "animated.gif")
    frames[1].save(cat / "pages.tiff", save_all=True, append_images=[frames[0], frames[2]])
    used(cat / "pages.tiff")
    used(cmyk_jpeg(cat / "cmyk.jpg"))
    used(write(cat / "ycck.jpg", ycck_jpeg(RED)))
    used(sixteen_bit_with_trns(cat / "gray16_trns.png"))
    used(write(cat / "gray_alpha16.png", gray_alpha_16()))
    used(palette_with_trns(cat / "palette_trns.png"))
    used(rotated_jpeg(cat / "rotated.jpg"))
    used(solid(cat / "日本語の猫.png"))
    used(solid(cat / "🐱.png"))
    used(solid(fs_path(cat, b"caf\xe9.png")))  # Latin-1 bytes: not valid UTF-8
    used(solid(cat / "nested" / "deep.png"))
    target = solid(outside / "elsewhere.png")
    (cat / "linked.png").symlink_to(target)
    used(cat / "linked.png")

    write(cat / ".hidden.png", b"junk")  # hidden: ignored
    write(cat / ".DS_Store", b"\0\0\0\1Bud1")
    write(cat / ".thumbs" / "t.png", b"junk")
    skipped(write(cat / "empty.jpg", b""), "empty file (0 bytes)")
    skipped(write(cat / "text.png", b"a text file, not a picture\n"), "not an image")
    skipped(write(cat / "notes.txt", b"notes"), "unsupported file type '.txt'")
    skipped(write(cat / "header_bomb.png", raw_png(100_000, 100_000, 8, 2, b"\0" * 10)), "too large")
    skipped(solid(cat / "above_limit.png", size=(300, 300)), "too large")
    (cat / "broken.png").symlink_to(base / "nowhere.png")
    skipped(cat / "broken.png", "broken symbolic link")
    (cat / "loop.png").symlink_to(cat / "loop.png")
    skipped(cat / "loop.png", "symbolic link loop")
    (cat / "nested" / "up").symlink_to(cat, target_is_directory=True)
    skipped(cat / "nested" / "up", "already read")
    os.mkfifo(cat / "fifo.png")  # reading a pipe would hang: it is never opened
    skipped(cat / "fifo.png", "not a regular file")

    non_utf8_class = fs_path(root, b"ni\xf1o")
    for i in range(2):
        used(solid(fs_path(non_utf8_class, b"%d.png" % i), BLUE))
    used(solid(root / "猫🐱" / "写真.png", GREEN))
    (root / "linked").symlink_to(outside / "linked_class", target_is_directory=True)  # a linked class folder
    for i in range(2):
        solid(outside / "linked_class" / f"{i}.png", GREEN)
        used(root / "linked" / f"{i}.png")

    skipped(solid(root / "stray.png"), "not inside a class sub-folder")  # a file where a class folder should be
    (root / "broken_class").symlink_to(base / "gone", target_is_directory=True)
    skipped(root / "broken_class", "broken symbolic link")
    (root / "again").symlink_to(root, target_is_directory=True)
    skipped(root / "again", "already read")
    write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")  # hidden folder: ignored
    return root, expected


# The corpus holds an image above Pillow's limit on purpose: Pillow warns about it, transferkit skips it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, tuple[str, str]]]:
    try:
        built = build_corpus(tmp_path)
    except (OSError, NotImplementedError, AttributeError) as error:  # no symlinks, pipes or byte names here
        pytest.skip(f"this file system cannot hold the corpus: {error}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)
    return built


def scan(root: Path) -> tuple[tk.ImageFiles, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = tk.scan_folder(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, tk.SkippedFilesWarning)]
    return files, messages


def test_every_awkward_file_has_its_defined_outcome(corpus):
    root, expected = corpus
    files, messages = scan(root)
    used = {os.path.relpath(p, root) for p in files.paths}
    skipped = {os.path.relpath(p, root): reason for p, reason in files.skipped}
    assert used == {k for k, (outcome, _) in expected.items() if outcome == USED}
    assert set(skipped) == {k for k, (outcome, _) in expected.items() if outcome == SKIPPED}
    for name, (outcome, fragment) in expected.items():
        if outcome == SKIPPED:
            assert fragment in skipped[name], (name, skipped[name])
    assert not any(".hidden" in p or ".DS_Store" in p or ".thumbs" in p or ".git" in p
                   for p in [*used, *skipped])
    assert files.class_names == ("cat", "dog", "linked", NON_UTF8_CLASS, "猫🐱")
    assert len(messages) == 1  # one warning lists every skipped file, each with its reason
    assert "header_bomb.png: too large" in messages[0] and "PIL.Image.MAX_IMAGE_PIXELS" in messages[0]
    assert messages[0].encode("utf-8")  # printable: the non-UTF-8 names are escaped, not surrogates
    with pytest.raises(tk.DataError, match="strict=True"):
        tk.scan_folder(root, strict=True)


def test_awkward_images_decode_to_what_a_person_sees(corpus):
    root, _ = corpus
    cat = root / "cat"

    def pixel(name: str | Path, x: int, y: int, background=(255, 255, 255)) -> np.ndarray:
        return np.asarray(read_image(cat / name, background=background).getpixel((x, y)), dtype=int)

    assert np.array_equal(load_image(cat / "one_pixel.png", image_size=16), np.full((16, 16, 3), BLUE, np.uint8))
    assert np.array_equal(pixel("animated.gif", 4, 4), RED)  # first frame
    assert np.array_equal(pixel("pages.tiff", 4, 4), GREEN)  # first page
    assert read_image(cat / "cmyk.jpg").mode == "RGB"
    assert np.abs(pixel("cmyk.jpg", 4, 4) - (255, 55, 55)).max() <= 8
    with Image.open(cat / "ycck.jpg") as raw:  # the file really is YCCK, and Pillow sees four channels
        assert raw.mode == "CMYK" and raw.info.get("adobe_transform") == 2
    assert np.abs(pixel("ycck.jpg", 4, 4) - RED).max() <= 12
    assert np.array_equal(pixel("gray16_trns.png", 4, 6, background=(0, 128, 0)), (0, 128, 0))
    assert np.array_equal(pixel("gray16_trns.png", 4, 1), (3, 3, 3))  # 1000 of 65535, scaled not clipped
    assert np.array_equal(pixel("gray_alpha16.png", 4, 6, background=(0, 0, 0)), (0, 0, 0))
    assert np.array_equal(pixel("gray_alpha16.png", 4, 1, background=(0, 0, 0)), (255, 255, 255))
    assert np.array_equal(pixel("palette_trns.png", 4, 6, background=(0, 0, 255)), (0, 0, 255))
    upright = read_image(cat / "rotated.jpg")
    assert upright.size == (10, 20)
    top = np.asarray(upright.getpixel((5, 3)), dtype=int)
    assert top[2] > 180 and top[0] < 80  # the blue half is on top once turned as the EXIF says
    with pytest.raises(tk.DataError, match=r"header_bomb\.png.*too large"):
        read_image(cat / "header_bomb.png")
    with pytest.raises(tk.DataError, match="not a regular file"):
        load_image(cat / "fifo.png", image_size=8)


def test_training_and_prediction_read_awkward_files_the_same_way(corpus):
    from transferkit._inference import prediction_input

    root, _ = corpus
    names = ["rotated.jpg", "ycck.jpg", "gray16_trns.png", "animated.gif", os.fsdecode(b"caf\xe9.png")]
    paths = tuple(str(root / "cat" / n) for n in names)
    files = tk.ImageFiles(paths, np.zeros(len(paths), np.int64), ("cat", "dog"))
    settings = tk.PipelineSettings(image_size=16, background=(0, 0, 0))
    trained = next(iter(make_dataset(files, image_size=16, batch_size=8, background=(0, 0, 0))))[0].numpy()
    predicted = prediction_input(list(paths), settings=settings).images
    np.testing.assert_array_equal(trained, predicted)
    rotated = trained[0]
    assert rotated[2, 8, 2] > 180 and rotated[13, 8, 0] > 180  # blue on top, red below: upright in both


def test_the_awkward_folder_trains(corpus):
    root, expected = corpus
    with pytest.warns(tk.SkippedFilesWarning):
        data = tk.load_folder(root, image_size=16, batch_size=64, validation_split=0.2, seed=0)
    labels = [y for _, batch in data.train for y in batch.numpy()] + [y for _, b in data.validation for y in b.numpy()]
    assert len(labels) == sum(outcome == USED for outcome, _ in expected.values())
    assert sorted(set(labels)) == [0, 1, 2, 3, 4]
    assert NON_UTF8_CLASS in data.class_names


def test_a_class_left_with_no_usable_image_is_an_error_that_says_why(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    write(root / "zebra" / "empty.jpg", b"")
    write(root / "zebra" / "notes.txt", b"notes")
    with pytest.raises(tk.DataError, match=r"zebra'? has no usable images; its 2 file\(s\) were skipped: "
                                           r"empty\.jpg: empty file.*notes\.txt: unsupported file type"):
        tk.scan_folder(root)
    (root / "zebra" / "empty.jpg").unlink()
    (root / "zebra" / "notes.txt").unlink()
    (root / "yak").mkdir()
    with pytest.raises(tk.DataError, match=r"yak'? has no usable images \(and 1 more: 'zebra'\); it holds no files"):
        tk.scan_folder(root)


def test_large_photos_are_decoded_at_reduced_size(tmp_path, monkeypatch):
    across, down = np.meshgrid(np.linspace(0, 255, 2000), np.linspace(0, 255, 1500))
    pixels = np.stack([across, down, np.full_like(across, 128.0)], axis=-1)
    photo = Image.fromarray(pixels.astype(np.uint8), "RGB")
    jpeg = tmp_path / "photo.jpg"
    photo.save(jpeg, quality=90)
    png = tmp_path / "scan.png"
    photo.resize((1200, 900)).save(png)
    reaching = []
    real_to_rgb = _images._to_rgb
    monkeypatch.setattr(_images, "_to_rgb", lambda image, bg: reaching.append(image.size) or real_to_rgb(image, bg))
    small = load_image(jpeg, image_size=32)
    assert reaching[-1] == (125, 94)  # JPEG drafted to 1/8 (250×188), then halved: never 2000×1500 in memory
    assert min(reaching[-1]) >= 64  # still at least twice the final size, so quality holds
    load_image(png, image_size=32)
    assert reaching[-1] == (86, 65)  # PNG reduced by 14 before any colour conversion copies it
    assert _images.check_image(jpeg) is None and max(reaching[-1]) <= 4 * 256  # the scan decodes small too
    full = read_image(jpeg)
    assert full.size == (2000, 1500)  # read_image keeps the full size
    reference = _images.resize_image(full, 32)
    assert np.abs(small.astype(int) - reference.astype(int)).mean() < 3


def _csv_tree(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for name, color in (("a", RED), ("b", GREEN), ("c", RED), ("d", GREEN)):
        solid(images / f"{name}.png", color)
    solid(labels / "local.png", GREEN)
    return images, labels


def test_csv_rows_have_defined_outcomes(tmp_path):
    images, labels = _csv_tree(tmp_path)
    write(images / "empty.png", b"")
    lines = [
        "path,label",
        "../images/a.png,cat",  # leaves the CSV's folder: used as written
        f"{images / 'b.png'},dog",  # absolute, outside the CSV's folder: used
        "",  # blank line: ignored
        ",",  # blank row: ignored
        "../labels/../images/a.png,cat",  # the first row's file, spelt another way: used once
        "../images/./c.png,cat",
        "local.png, dog ",  # spaces around the label are trimmed
        "../images/empty.png,dog",  # unusable file: skipped
        "../images/d.png,dog",
    ]
    csv_path = write(labels / "train.csv", "\n".join(lines).encode())
    with pytest.warns(tk.SkippedFilesWarning) as record:
        files = tk.read_csv(csv_path)
    names = [Path(p).name for p in files.paths]
    assert names == ["a.png", "b.png", "c.png", "local.png", "d.png"]
    assert files.class_names == ("cat", "dog") and files.labels.tolist() == [0, 1, 0, 1, 1]
    reasons = dict(files.skipped)
    assert reasons[str(labels / "../labels/../images/a.png")] == "row 6 repeats row 2 (the image is used once)"
    assert reasons[str(labels / "../images/empty.png")] == "empty file (0 bytes)"
    assert len(record) == 1 and "row 6 repeats row 2" in str(record[0].message)
    with pytest.raises(tk.DataError, match="strict=True"):
        tk.read_csv(csv_path, strict=True)


def test_csv_mistakes_are_errors_that_name_the_row(tmp_path):
    _images_dir, labels = _csv_tree(tmp_path)

    def read(*rows: str, **kwargs):
        path = write(labels / "t.csv", "\n".join(["path,label", *rows]).encode())
        return tk.read_csv(path, **kwargs)

    ok = ["../images/a.png,cat", "../images/b.png,dog"]
    assert read(*ok, class_names=["dog", "cat"]).labels.tolist() == [1, 0]  # class_names sets the order
    with pytest.raises(tk.DataError, match=r"1 label\(s\) are not in class_names: 'dgo' \(row 4\).*"
                                           r"Known classes: 'cat', 'dog'"):
        read(*ok, "../images/c.png,dgo", class_names=["cat", "dog"])
    with pytest.raises(tk.DataError, match=r"a\.png' is labelled 'cat' in row 2 and 'dog' in row 4"):
        read(*ok, "../images/a.png,dog")
    with pytest.raises(tk.DataError, match=r"row 4: the label of .*c\.png' is empty"):
        read(*ok, "../images/c.png,")
    with pytest.raises(tk.DataError, match=r"row 4: the label of .*c\.png' is empty"):
        read(*ok, "../images/c.png")  # a short row: the label cell is missing
    with pytest.raises(tk.DataError, match=r"row 4: the path is empty \(label 'cat'\)"):
        read(*ok, ",cat")
    with pytest.raises(tk.DataError, match=r"row 4: image file .*images' cannot be used: a folder, not a file"):
        read(*ok, "../images,cat")
    with pytest.raises(tk.DataError, match=r"row 4: image file .*gone\.png' does not exist"):
        read(*ok, "../images/gone.png,cat")
    with pytest.raises(tk.DataError, match="more than once"):
        read(*ok, class_names=["cat", "cat"])
    with pytest.raises(tk.DataError, match="not a readable CSV file"):
        read(*ok, "../images/c.png," + "x" * 200_000)  # a field past the csv module's limit
    solid(labels / "gray.png", (128, 128, 128))
    write(labels / "broken.png", b"")
    with pytest.raises(tk.DataError, match=r"class 'bird' has no usable image; .*broken\.png: empty file"):
        read(*ok, "gray.png,cat", "broken.png,bird")


def test_csv_in_another_encoding_still_names_its_files(tmp_path):
    folder = tmp_path / "latin1"
    try:
        solid(fs_path(folder, b"caf\xe9.png"), RED)
    except OSError as error:
        pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    solid(folder / "tea.png", GREEN)
    write(folder / "labels.csv", b"path,label\ncaf\xe9.png,caf\xe9\ntea.png,tea\n")  # Latin-1, not UTF-8
    files = tk.read_csv(folder / "labels.csv")
    assert os.fsencode(files.paths[0]).endswith(b"caf\xe9.png")
    assert files.class_names == ("caf\\xe9", "tea")  # a printable label


def test_train_command_uses_a_file_whose_name_is_not_utf8(tmp_path):
    from transferkit._features import files_digest
    from transferkit.cli import main

    root = write_image_folder(tmp_path / "data", per_class=4)
    try:
        odd = solid(fs_path(root / "red", b"caf\xe9.png"), RED, size=(24, 24))
    except OSError as error:
        pytest.skip(f"this file system refuses non-UTF-8 names: {error}")
    assert len(files_digest([str(odd)], np.zeros(1))) == 64  # the cache and checkpoint keys take the name
    out = tmp_path / "run"
    assert main(["train", str(root), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "1",
                 "--fine-tune-epochs", "0", "--out", str(out)]) == 0
    metrics = (out / "metrics.json").read_text()
    assert '"skipped": []' in metrics  # the file was used, not skipped
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")  # valid UTF-8
    review = tmp_path / "review"
    assert main(["review", str(root), "--backbone", "tiny_cnn", "--out", str(review)]) == 0
    assert (review / "review.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (review / "outliers.csv").read_bytes().startswith(b"path,reason,score")


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # Pillow's notes on the corrupt TIFF tags
def test_mutated_files_are_used_or_skipped_never_a_crash(tmp_path):
    """Random byte flips and cuts of real PNG, JPEG, GIF, TIFF and WebP files (seeded): every mutant is
    either accepted by the scan and then readable by training, or skipped with a reason."""
    rng = np.random.default_rng(1234)
    base = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "RGB")
    outcomes = {"used": 0, "skipped": 0}
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        base.save(buffer, fmt)
        original = buffer.getvalue()
        for i in range(24):
            data = bytearray(original)
            if i % 3 == 0:
                data = data[: rng.integers(1, len(data))]  # cut short
            else:
                for at in rng.integers(0, len(data), size=1 + i % 5):
                    data[at] = int(rng.integers(0, 256))  # flip bytes
            path = write(tmp_path / f"{fmt.lower()}_{i}.{fmt.lower()}", bytes(data))
            reason = _images.check_image(path)
            if reason is None:
                assert load_image(path, image_size=8).shape == (8, 8, 3)  # the scan's yes is training's yes
                outcomes["used"] += 1
            else:
                assert isinstance(reason, str) and reason
                with pytest.raises(tk.DataError, match="Cannot read image"):
                    load_image(path, image_size=8)
                outcomes["skipped"] += 1
    assert outcomes["used"] > 0 and outcomes["skipped"] > 0 and sum(outcomes.values()) == 120
