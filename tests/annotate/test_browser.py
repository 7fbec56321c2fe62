"""The annotation page as a person uses it, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): open a dataset, draw with mouse, pen and touch, switch class,
erase, undo / redo, tag, navigate, reload, and check the PNGs and the CSV on disk pixel by pixel.

Skipped with the reason where Chromium or its driver is not installed (``.ci/run`` installs them).
A screenshot of the page with the prediction overlay is kept in ``test-artifacts/`` (or
``$WEAKSEG_TEST_ARTIFACTS``)."""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from annotate.helpers import fake_checkpoint, live_server, photo_dataset
from weakseg.data.scribbles import rasterize_polylines
from weakseg.io import read_label

pytestmark = pytest.mark.slow  # a browser start and a few seconds of page work

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install '.[dev]')"
)
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"a": (120, 160), "b": (100, 140), "trip/c": (90, 120)}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    binary = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(
            "headless Chromium and its driver are not installed "
            "(Debian: apt-get install chromium chromium-driver; .ci/run does this)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--force-device-scale-factor=1",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_ready(driver, image_id: str) -> None:
    wait_for(
        lambda: driver.execute_script(
            "return document.body.dataset.ready === 'yes' && document.body.dataset.imageId === arguments[0]",
            image_id,
        ),
        f"image {image_id!r} to load",
    )


def wait_saved(driver) -> None:
    wait_for(lambda: driver.execute_script("return document.body.dataset.saved === 'yes'"), "the save")
    status = driver.find_element(By.ID, "save-status").text
    assert status.startswith("saved"), status


def wait_png(path: Path, expected: np.ndarray) -> None:
    def matches() -> bool:
        try:
            return path.is_file() and np.array_equal(read_label(path), expected)
        except Exception:  # being replaced at this moment
            return False

    try:
        wait_for(matches, f"{path.name} to hold the drawn scribble")
    except AssertionError:
        got = read_label(path) if path.is_file() else None
        diff = None if got is None else np.argwhere(got != expected)[:10].tolist()
        raise AssertionError(f"{path} differs from the expected scribble at (y, x) {diff}") from None


def origin(driver) -> tuple[int, int]:
    """Client coordinates (whole CSS pixels) of the image's top-left pixel at 1:1 zoom."""
    driver.find_element(By.ID, "zoom-one").click()
    rect = driver.execute_script(
        "const r = document.getElementById('scribble').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, document.getElementById('scribble').width];"
    )
    assert rect[2] == rect[4], f"not at 1:1 zoom: {rect}"
    assert rect[0] == math.floor(rect[0]) and rect[1] == math.floor(rect[1]), f"fractional offsets {rect}"
    return int(rect[0]), int(rect[1])


def drag(driver, kind: str, points: list[tuple[int, int]]) -> None:
    """Press at the first point, move through the others and lift: a mouse, pen or touch stroke."""
    pointer = PointerInput(kind, f"{kind}-pointer")
    actions = ActionBuilder(driver, mouse=pointer, duration=50)
    actions.pointer_action.move_to_location(*points[0]).pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to_location(x, y)
    actions.pointer_action.pointer_up()
    actions.perform()


def keys(driver, *sequence: str) -> None:
    body = driver.find_element(By.TAG_NAME, "body")
    for k in sequence:
        body.send_keys(k)


def tags_rows(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return {r[0]: r[1] for r in list(csv.reader(fh))[1:]}


def page_labels(driver, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(driver.execute_script("return window.weakseg.labels()"), np.uint8).reshape(size)


def checkboxes(driver) -> dict[str, tuple[bool, bool]]:
    """Tag check boxes: class name -> (checked, disabled)."""
    out = {}
    for label in driver.find_elements(By.CSS_SELECTOR, "#tags label"):
        box = label.find_element(By.TAG_NAME, "input")
        out[label.text.strip()] = (box.is_selected(), not box.is_enabled())
    return out


def test_draw_switch_class_erase_undo_tag_navigate_and_reload(browser, tmp_path: Path) -> None:
    driver = browser
    dataset = photo_dataset(tmp_path, SIZES)
    size = SIZES["a"]
    with live_server(dataset) as url:
        driver.get(url + "/")
        wait_ready(driver, "a")
        assert driver.find_element(By.ID, "progress-text").text == "0 / 3 done"
        x0, y0 = origin(driver)

        # a mouse stroke with the default class (cat) and width (5)
        drag(driver, interaction.POINTER_MOUSE, [(x0 + 10, y0 + 20), (x0 + 35, y0 + 20), (x0 + 60, y0 + 20)])
        cat = rasterize_polylines([(1, np.array([[10, 20], [60, 20]]))], size, width=5)
        wait_png(dataset / "scribbles" / "a.png", cat)
        wait_saved(driver)
        assert tags_rows(dataset / "tags.csv")["a"] == "background;cat"

        # class 3 (dog) by key, a thinner (even) pen: a vertical pen stroke
        keys(driver, "3", "[")
        assert driver.find_element(By.ID, "brush-width-value").text == "4"
        drag(driver, interaction.POINTER_PEN, [(x0 + 100, y0 + 30), (x0 + 100, y0 + 55), (x0 + 100, y0 + 80)])
        both = cat.copy()
        dog = rasterize_polylines([(2, np.array([[100, 30], [100, 80]]))], size, width=4)
        both[dog != 255] = 2
        wait_png(dataset / "scribbles" / "a.png", both)
        wait_saved(driver)
        assert tags_rows(dataset / "tags.csv")["a"] == "background;cat;dog"
        assert checkboxes(driver) == {
            "background": (True, True),
            "cat": (True, True),
            "dog": (True, True),
        }  # scribbled classes are tagged and locked

        # the eraser, by touch, across the cat stroke
        keys(driver, "e")
        drag(driver, interaction.POINTER_TOUCH, [(x0 + 30, y0 + 12), (x0 + 30, y0 + 28)])
        erased = both.copy()
        eraser = rasterize_polylines([(1, np.array([[30, 12], [30, 28]]))], size, width=4)
        erased[eraser != 255] = 255
        wait_png(dataset / "scribbles" / "a.png", erased)
        wait_saved(driver)

        # undo twice (eraser, dog), redo once (dog)
        keys(driver, Keys.CONTROL + "z")
        wait_png(dataset / "scribbles" / "a.png", both)
        keys(driver, Keys.CONTROL + "z")
        wait_png(dataset / "scribbles" / "a.png", cat)
        wait_saved(driver)
        assert tags_rows(dataset / "tags.csv")["a"] == "background;cat;dog"  # dog stays tagged, now unlocked
        assert checkboxes(driver)["dog"] == (True, False)
        driver.find_element(By.ID, "redo").click()
        wait_png(dataset / "scribbles" / "a.png", both)
        wait_saved(driver)

        # next image: tag it only
        keys(driver, Keys.ARROW_RIGHT)
        wait_ready(driver, "b")
        driver.find_element(By.CSS_SELECTOR, "#tags input[data-class='1']").click()  # cat
        wait_saved(driver)
        assert tags_rows(dataset / "tags.csv") == {
            "a": "background;cat;dog",
            "b": "background;cat",
            "trip/c": "background",
        }
        assert (read_label(dataset / "scribbles" / "b.png") == 255).all()
        assert driver.find_element(By.ID, "progress-text").text == "2 / 3 done"

        # "next to do" skips to trip/c; back to a with the arrow keys
        keys(driver, "n")
        wait_ready(driver, "trip/c")
        keys(driver, Keys.ARROW_LEFT)
        wait_ready(driver, "b")
        keys(driver, Keys.ARROW_LEFT)
        wait_ready(driver, "a")
        np.testing.assert_array_equal(page_labels(driver, size), both)

        # reloading shows exactly what was saved
        driver.refresh()
        wait_ready(driver, "a")
        on_disk = read_label(dataset / "scribbles" / "a.png")
        np.testing.assert_array_equal(on_disk, both)
        np.testing.assert_array_equal(page_labels(driver, size), on_disk)
        assert checkboxes(driver) == {"background": (True, True), "cat": (True, True), "dog": (True, True)}
        done = [li.get_attribute("class") for li in driver.find_elements(By.CSS_SELECTOR, "#image-list li")]
        assert ["done" in c for c in done] == [True, True, False]


def test_prediction_overlay_and_uncertainty_list_screenshot(browser, tmp_path: Path) -> None:
    driver = browser
    dataset = photo_dataset(tmp_path, SIZES)
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    with live_server(dataset, ckpt, device="cpu") as url:
        driver.get(url + "/#b")
        wait_ready(driver, "b")
        plain = driver.get_screenshot_as_png()
        keys(driver, "o")
        wait_for(
            lambda: driver.execute_script("return document.body.dataset.prediction === 'shown'"),
            "the overlay",
        )
        assert driver.find_element(By.ID, "uncertainty-value").text.startswith("uncertainty ")
        driver.find_element(By.ID, "tab-uncertain").click()
        wait_for(
            lambda: "ranked by the model" in driver.find_element(By.ID, "rank-status").text,
            "the ranking",
            120,
        )
        items = driver.find_elements(By.CSS_SELECTOR, "#image-list li")
        scores = [float(li.find_element(By.CLASS_NAME, "score").text) for li in items]
        assert len(items) == 3 and scores == sorted(scores, reverse=True)
        shot = driver.get_screenshot_as_png()
        assert shot != plain
        folder = Path(os.environ.get("WEAKSEG_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "annotate_overlay.png").write_bytes(shot)


def test_two_tabs_on_one_image_last_save_wins_and_the_other_tab_catches_up(browser, tmp_path: Path) -> None:
    driver = browser
    dataset = photo_dataset(tmp_path, SIZES)
    size = SIZES["a"]
    path = dataset / "scribbles" / "a.png"
    with live_server(dataset) as url:
        driver.get(url + "/#a")
        wait_ready(driver, "a")
        first = driver.current_window_handle
        x0, y0 = origin(driver)
        drag(driver, interaction.POINTER_MOUSE, [(x0 + 10, y0 + 10), (x0 + 50, y0 + 10)])
        one = rasterize_polylines([(1, np.array([[10, 10], [50, 10]]))], size, width=5)
        wait_png(path, one)
        wait_saved(driver)

        driver.switch_to.new_window("tab")  # a second tab on the same image
        driver.get(url + "/#a")
        wait_ready(driver, "a")
        np.testing.assert_array_equal(page_labels(driver, size), one)
        x1, y1 = origin(driver)
        drag(driver, interaction.POINTER_MOUSE, [(x1 + 10, y1 + 40), (x1 + 50, y1 + 40)])
        two = one.copy()
        two[rasterize_polylines([(1, np.array([[10, 40], [50, 40]]))], size, width=5) == 1] = 1
        wait_png(path, two)  # the second tab's save, whole
        wait_saved(driver)
        driver.close()

        driver.switch_to.window(first)  # back in the first tab: it reloads what the second saved
        driver.execute_script("window.dispatchEvent(new Event('focus'))")  # headless tabs may not get one
        wait_for(lambda: np.array_equal(page_labels(driver, size), two), "the first tab to catch up")
        assert "another tab" in driver.find_element(By.ID, "save-status").text
        drag(driver, interaction.POINTER_MOUSE, [(x0 + 10, y0 + 70), (x0 + 50, y0 + 70)])
        three = two.copy()
        three[rasterize_polylines([(1, np.array([[10, 70], [50, 70]]))], size, width=5) == 1] = 1
        wait_png(path, three)  # the last save wins, and it holds both tabs' strokes
