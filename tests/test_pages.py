"""The HTML pages in a real browser (headless Chromium through Playwright): report.html after
`transferkit train` and `transferkit evaluate --out`, and review.html with its decisions.csv.

Each page is opened from its file with every request that is not the page itself or a data: URI
aborted and recorded: a self-contained page makes none. Skipped where Playwright or Chromium is missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs Chromium (apt-get install chromium)", allow_module_level=True)

from conftest import color_image, write_image_folder  # noqa: E402
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

from transferkit._review._page import default_thumbnail, write_review_page  # noqa: E402
from transferkit.cli import main  # noqa: E402

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def browser() -> Browser:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Opened:
    """A page opened from a file, with what went wrong on it: console errors, uncaught exceptions,
    and every request it tried to make beyond its own file and data: URIs."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(("file://", "data:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def check(self) -> None:
        """No error, no request, every image decoded."""
        assert self.errors == []
        assert self.requests == []
        broken = self.page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0))"
                                                ".map(i => i.alt)")
        assert broken == []

    def close(self) -> None:
        self.context.close()


def _no_external_reference(html: str) -> None:
    assert re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE) is None
    assert re.search(r"<(link|iframe|object|embed)\b|@import|url\(|src=\"(?!data:)", html) is None


# ------------------------------------------------------------------------------------ report.html


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of the tiny backbone trained by the command (so through write_report), and its data."""
    root = tmp_path_factory.mktemp("report")
    data = write_image_folder(root / "data", per_class=12)
    out = root / "run"
    # one trained head epoch: a weak model, so that the matrix has mistakes to click on
    assert main(["train", str(data), "--backbone", "tiny_cnn", "--weights", "imagenet", "--epochs", "1",
                 "--fine-tune-epochs", "1", "--unfreeze-blocks", "1", "--refit", "never", "--out", str(out)]) == 0
    return out, data


def _open_a_cell(opened: Opened, matrix: list[list[int]]) -> None:
    """Click the fullest cell off the diagonal (the fullest cell if there is no mistake) and check
    the images it shows."""
    page = opened.page
    cm = np.asarray(matrix)
    off = cm - np.diag(np.diag(cm))
    i, j = np.unravel_index(int(np.argmax(off if off.any() else cm)), cm.shape)
    assert page.locator("#cell-images").is_hidden()
    page.click(f'table.confusion td.cell[data-true="{i}"][data-predicted="{j}"] button')
    box = page.locator("#cell-images")
    assert box.is_visible()
    assert box.locator(".cell-title").inner_text().startswith(f"True {CLASSES[i]}, predicted {CLASSES[j]}: "
                                                               f"{cm[i, j]} image")
    examples = box.locator(".example")
    assert examples.count() == cm[i, j]
    for k in range(examples.count()):
        text = examples.nth(k).inner_text()
        assert f"true {CLASSES[i]}" in text and f"predicted {CLASSES[j]}" in text
    assert box.locator("img").count() == cm[i, j]
    opened.check()  # the cell's thumbnails decoded too


def test_train_writes_a_self_contained_report_page(browser, trained):
    out, _ = trained
    html = (out / "report.html").read_text(encoding="utf-8")
    _no_external_reference(html)
    metrics = json.loads((out / "metrics.json").read_text())
    matrix = metrics["validation"]["confusion_matrix"]
    opened = Opened(browser, out / "report.html")
    try:
        page = opened.page
        opened.check()
        for section in ("summary", "curves", "per-class", "confusion", "calibration", "top-losses"):
            assert page.locator(f"section#{section}").count() == 1, section
        assert page.locator("#curves svg").count() == 2  # loss and accuracy
        assert page.locator("#curves svg line.phase-boundary").count() == 2  # fine-tuning starts, on each
        assert "fine tune" in page.locator("#curves svg").first.inner_html()
        rows = page.locator("#per-class tbody tr")
        assert rows.count() == 3
        assert [rows.nth(k).locator("td").first.inner_text() for k in range(3)] == CLASSES
        f1 = [float(rows.nth(k).locator("td").nth(3).inner_text()) for k in range(3)]
        assert f1 == pytest.approx([metrics["validation"]["per_class"][c]["f1"] for c in CLASSES], abs=5e-4)
        cells = [[int(page.locator(f'td.cell[data-true="{i}"][data-predicted="{j}"]').inner_text())
                  for j in range(3)] for i in range(3)]
        assert cells == matrix
        calibration = metrics["calibration"]
        text = page.locator("#calibration").inner_text()
        assert f"{calibration['ece_before']:.4f}" in text and f"{calibration['ece_after']:.4f}" in text
        assert page.locator("#calibration svg").count() == 1
        images = sum(map(sum, matrix))
        assert page.locator("#top-losses .example").count() == min(24, images)
        if np.trace(np.asarray(matrix)) < images:  # mistakes: the most confused pairs are listed
            assert page.locator("#confused-pairs tbody tr").count() >= 1
        _open_a_cell(opened, matrix)
    finally:
        opened.close()


def test_evaluate_out_writes_the_page_and_metrics_for_a_test_set(browser, trained, tmp_path, capsys):
    run, _ = trained
    test = write_image_folder(tmp_path / "test", per_class=4)
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(run), str(test), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == printed
    assert sum(map(sum, printed["confusion_matrix"])) == 12
    # the same figures as evaluate without --out (one prediction per file instead of batches)
    assert main(["evaluate", str(run), str(test), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["confusion_matrix"] == printed["confusion_matrix"]
    assert plain["accuracy"] == pytest.approx(printed["accuracy"]) and plain["loss"] == pytest.approx(printed["loss"],
                                                                                                     abs=1e-5)
    opened = Opened(browser, out / "report.html")
    try:
        opened.check()
        page = opened.page
        assert "test" in page.locator("#summary").inner_text()
        assert page.locator("#per-class tbody tr").count() == 3
        _open_a_cell(opened, printed["confusion_matrix"])
    finally:
        opened.close()


# ------------------------------------------------------------------------------------ review.html

ODD_NAME = 'odd, "name" <&>.png'


@pytest.fixture
def reviewed(tmp_path):
    """Hand-made review rows over real image files: a path with a comma, quotes, < and &, a leak
    between the data and a test folder (given second, listed first), an unreadable outlier."""
    data = write_image_folder(tmp_path / "data", per_class=4)
    test = write_image_folder(tmp_path / "test", per_class=1)
    color_image((220, 30, 30), seed=7).save(data / "red" / ODD_NAME)

    def p(name: str, n: int, ext: str) -> str:
        return str(data / name / f"{n}.{ext}")

    rows = {
        "label_issues": [{"path": str(data / "red" / ODD_NAME), "given": "red", "suggested": "blue", "score": 0.93},
                         {"path": p("green", 1, "png"), "given": "green", "suggested": "red", "score": 0.71},
                         {"path": p("blue", 2, "jpg"), "given": "blue", "suggested": "green", "score": 0.42}],
        "duplicates": [{"path_a": p("red", 1, "png"), "path_b": p("red", 3, "png"), "similarity": 0.995,
                        "across": False},
                       {"path_a": p("blue", 1, "png"), "path_b": str(test / "blue" / "0.jpg"), "similarity": 0.981,
                        "across": True}],
        "outliers": [{"path": p("green", 3, "png"), "reason": "far from its class and every other", "score": 4.2},
                     {"path": str(tmp_path / "gone <b>.png"), "reason": "cannot be read", "score": ""}],
    }
    page = write_review_page(tmp_path / "review" / "review.html", title='Review of <13> "images" & more',
                             class_names=CLASSES, class_counts={"blue": 4, "green": 4, "red": 5}, **rows)
    return page, data, rows


def test_review_page_decisions_download_as_csv(browser, reviewed, tmp_path):
    path, data, rows = reviewed
    html = path.read_text(encoding="utf-8")
    _no_external_reference(html)
    assert "<b>.png" not in html and "<13>" not in html  # every text escaped
    opened = Opened(browser, path)
    try:
        page = opened.page
        assert page.title() == 'Review of <13> "images" & more'
        assert page.locator("header h1").inner_text() == 'Review of <13> "images" & more'
        for section in ("summary", "label-issues", "duplicates", "outliers", "classes"):
            assert page.locator(f"section#{section}").count() == 1, section
        summary = page.locator("#summary").inner_text()
        assert "13\nimages in 3 classes" in summary and "1 leak" in summary
        assert page.locator("#label-issues .item").count() == 3
        assert page.locator("#outliers .item").count() == 2
        assert page.locator("#classes tbody tr").count() == 3
        # the leak first, marked; its sides say which is which
        pairs = page.locator("#duplicates .item")
        assert pairs.count() == 2
        assert "LEAK" in pairs.nth(0).inner_text() and "LEAK" not in pairs.nth(1).inner_text()
        assert rows["duplicates"][1]["path_b"] in pairs.nth(0).inner_text()
        # images: 3 issues + 4 pair sides + 1 outlier (the unreadable one has none)
        assert page.locator("img.thumb").count() == 8
        assert page.locator("#outliers .item").nth(1).locator(".missing").inner_text() == "no preview"
        assert page.locator("#outliers .item").nth(1).locator(".path").inner_text() == rows["outliers"][1]["path"]
        first = page.locator('[data-key="issue-0"]')
        assert first.locator(".path").inner_text() == str(data / "red" / ODD_NAME)
        assert first.locator("select").input_value() == "blue"  # the suggestion, preselected

        first.locator('input[value="relabel"]').check()
        leak = page.locator('[data-key="pair-0"]')
        assert leak.locator('input[value="remove-b"]').count() == 0  # only the data's side is decided
        leak.locator('input[value="remove-a"]').check()
        page.locator('[data-key="outlier-0"] input[value="keep"]').check()
        page.locator('[data-key="issue-1"] input[value="remove"]').check()  # decided, then cleared
        page.locator('[data-key="issue-1"] button.clear').click()
        assert page.locator("#decided").inner_text() == "3 of 9 decided"

        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "decisions.csv"
        saved = tmp_path / "decisions.csv"
        download.value.save_as(saved)
        opened.check()

        # decisions survive a reload of the page
        page.reload()
        assert page.locator("#decided").inner_text() == "3 of 9 decided"
        assert page.locator('[data-key="issue-0"] input[value="relabel"]').is_checked()
    finally:
        opened.close()

    text = saved.read_bytes().decode("utf-8")
    odd = str(data / "red" / ODD_NAME).replace('"', '""')
    # the leak's other side (the test folder's image) gets no row: decisions.csv is applied to the data
    assert text == ("path,decision,label\r\n"
                    f'"{odd}",relabel,blue\r\n'
                    f"{data / 'blue' / '1.png'},remove,\r\n"
                    f"{data / 'green' / '3.png'},keep,\r\n")
    assert list(csv.reader(io.StringIO(text))) == [
        ["path", "decision", "label"], [str(data / "red" / ODD_NAME), "relabel", "blue"],
        [str(data / "blue" / "1.png"), "remove", ""], [str(data / "green" / "3.png"), "keep", ""]]

    # the review's own reader takes it as it is
    planning = pytest.importorskip("transferkit._review._plan")
    plan = planning.plan_decisions(saved, data)
    assert sorted((a.kind, Path(a.source).name, a.label) for a in plan.actions) == [
        ("move", ODD_NAME, "blue"), ("quarantine", "1.png", None)]


def test_review_page_pair_choices_and_a_few_thousand_items(browser, tmp_path):
    image = tmp_path / "one.png"
    color_image((30, 40, 220)).save(image)
    thumbnail = default_thumbnail(image)
    assert thumbnail[:8] == b"\x89PNG\r\n\x1a\n"
    issues = [{"path": f"/data/red/{n}.jpg", "given": "red", "suggested": "blue", "score": 1 - n / 4000}
              for n in range(3000)]
    pairs = [{"path_a": "/data/red/0.jpg", "path_b": "/data/red/1.jpg", "similarity": 0.99, "across": False}]
    start = time.perf_counter()
    path = write_review_page(tmp_path / "review.html", title="Many", class_names=CLASSES,
                             class_counts={"red": 3000}, label_issues=issues, duplicates=pairs, outliers=[],
                             thumbnail=lambda p: thumbnail)
    written = time.perf_counter() - start
    assert written < 5
    opened = Opened(browser, path)
    try:
        page = opened.page
        assert page.locator("#label-issues .item").count() == 50  # a page of a section at a time
        assert page.locator("#label-issues .where").inner_text() == "1–50 of 3000"
        page.locator("#label-issues button.next").click()
        assert page.locator("#label-issues .item").first.get_attribute("data-key") == "issue-50"
        assert page.locator("#outliers").inner_text().endswith("None found.")
        # one path, one decision: the pair's choice shows on the issue of the same image and back
        page.locator('[data-key="pair-0"] input[value="remove-b"]').check()
        page.locator("#label-issues button.prev").click()
        assert page.locator('[data-key="issue-1"] input[value="remove"]').is_checked()
        assert page.locator('[data-key="issue-0"] input[value="keep"]').is_checked()
        page.locator('[data-key="issue-0"] select').select_option("green")  # choosing a class relabels
        assert page.locator('[data-key="pair-0"] .state').inner_text() == "remove right"
        page.locator('[data-key="pair-0"] input[value="keep"]').check()  # keep both: the relabel stays
        csv_text = page.evaluate("window.reviewDecisionsCsv()")
        assert csv_text == "path,decision,label\r\n/data/red/0.jpg,relabel,green\r\n/data/red/1.jpg,keep,\r\n"
        opened.check()
    finally:
        opened.close()


def _tree(root: Path) -> dict[str, str | None]:
    """Every path below ``root`` (relative) with its content's hash (``None`` for a folder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_review_command_finds_planted_problems_and_its_page_s_decisions_apply_and_undo(browser, tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=10)
    planted = data / "blue" / "planted.png"  # a red image in the blue folder
    color_image((220, 30, 30), seed=999).save(planted)
    copy = data / "green" / "copy.png"  # an exact copy of another green image
    shutil.copyfile(data / "green" / "1.png", copy)
    before = _tree(data)
    out = tmp_path / "review"
    assert main(["review", str(data), "--backbone", "tiny_cnn", "--out", str(out)]) == 0
    assert "suspected label errors" in capsys.readouterr().out
    issues = list(csv.DictReader((out / "label_issues.csv").open(encoding="utf-8")))
    assert [(r["given"], r["suggested"]) for r in issues if r["path"] == str(planted)] == [("blue", "red")]
    pairs = list(csv.DictReader((out / "duplicates.csv").open(encoding="utf-8")))
    assert {pairs[0]["path_a"], pairs[0]["path_b"]} == {str(data / "green" / "1.png"), str(copy)}
    assert float(pairs[0]["similarity"]) > 0.999
    assert (out / "outliers.csv").read_text(encoding="utf-8").startswith("path,reason,score")

    opened = Opened(browser, out / "review.html")
    try:
        page = opened.page
        issue = page.locator(".item", has_text=str(planted)).first
        issue.locator('input[value="relabel"]').check()
        assert issue.locator("select").input_value() == "red"
        pair = page.locator('[data-key="pair-0"]')
        side = "remove-b" if pairs[0]["path_b"] == str(copy) else "remove-a"
        pair.locator(f'input[value="{side}"]').check()
        with page.expect_download() as download:
            page.click("#download")
        decisions = tmp_path / "decisions.csv"
        download.value.save_as(decisions)
        opened.check()
    finally:
        opened.close()

    assert main(["review", str(data), "--apply", str(decisions)]) == 1  # prints the plan, changes nothing
    assert "--yes" in capsys.readouterr().out and _tree(data) == before
    assert main(["review", str(data), "--apply", str(decisions), "--yes"]) == 0
    assert (data / "red" / "planted.png").is_file() and not planted.exists() and not copy.exists()
    assert (tmp_path / "data.review" / "quarantine" / "green" / "copy.png").is_file()  # beside the data, kept
    assert main(["review", str(data), "--apply", str(decisions), "--yes"]) == 0  # again: nothing to do
    assert "Nothing to do" in capsys.readouterr().out
    assert main(["review", str(data), "--undo"]) == 0
    assert _tree(data) == before
