"""The page in a real browser: Debian's chromium driven by Playwright; drag and drop, file chooser, screenshots."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bench.live import BROWSER_FLAGS
from conftest import CAT_LABELS, COFFEE_LABELS, PHOTOS, ROOT, require_debian_package

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = BROWSER_FLAGS  # Chromium headless, on loopback, without its background services
ARTIFACTS = ROOT / "test-artifacts"
DROP_ZONE = 'button[aria-label="Drop an image file here to upload"]'
TOP_LABEL = 'h2[data-testid="label-output-value"]'


@pytest.fixture(scope="module")
def page(server):
    require_debian_package(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def open_page(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector(DROP_ZONE, timeout=60_000)


def classify_and_read(page) -> str:
    """No click: a photo is classified as soon as it arrives (there is no Submit button to press)."""
    assert page.get_by_role("button", name="Submit").count() == 0
    page.wait_for_selector(TOP_LABEL, timeout=60_000)
    return page.inner_text(TOP_LABEL).strip()


def choose_file(page, selector: str, paths: list) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(selector)
    chooser.value.set_files([str(p) for p in paths])


def test_drag_and_drop_a_photo_then_flag_it(page, server, flagging_dir):
    open_page(page, server)
    data = base64.b64encode((PHOTOS / "cat.jpeg").read_bytes()).decode()
    transfer = page.evaluate_handle("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        return transfer;
    }""", [data, "cat.jpeg"])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(DROP_ZONE, event, {"dataTransfer": transfer})
    page.wait_for_selector('[data-testid="image"] img', timeout=30_000)  # the dropped photo is shown
    assert classify_and_read(page) in CAT_LABELS
    top = page.inner_text(TOP_LABEL).strip()
    bar = page.locator(f'meter[aria-label="{top}"]')  # the probability bar of the top label, and its value
    assert 50 <= float(bar.get_attribute("value")) * 100 <= 100
    assert page.locator(f'[data-testid="{top}-confidence-set"]').inner_text().strip().endswith("%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "drag-and-drop.png"), full_page=True)

    page.get_by_role("button", name="Flag").click()  # a misclassified photo is kept for retraining
    def flagged_text() -> str:
        return "".join(f.read_text() for f in flagging_dir.rglob("*.csv"))

    for _ in range(50):
        if top in flagged_text():
            break
        page.wait_for_timeout(200)
    assert top in flagged_text()
    from classifier.retrain import read_flagged  # the Train tab reads what the Flag button wrote

    [(photo, predicted)] = read_flagged(flagging_dir)
    assert predicted == top and photo.read_bytes() == (PHOTOS / "cat.jpeg").read_bytes()
    assert any(p.suffix in (".jpeg", ".jpg", ".png", ".webp") for p in flagging_dir.rglob("*"))


def test_upload_through_the_file_chooser(page, server):
    open_page(page, server)
    choose_file(page, DROP_ZONE, [PHOTOS / "coffee.png"])
    page.wait_for_selector('[data-testid="image"] img', timeout=30_000)
    assert classify_and_read(page) in COFFEE_LABELS
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "file-chooser.png"), full_page=True)


def test_an_example_click_classifies_and_the_heatmap_shows_why(page, server):
    open_page(page, server)
    page.locator("button.gallery-item:visible").first.click()  # an example photo
    assert classify_and_read(page)
    assert not page.locator("#heatmap").is_visible()  # off until asked: nothing computed
    open_page(page, server)
    choose_file(page, DROP_ZONE, [PHOTOS / "cat.jpeg"])
    page.wait_for_function("(labels) => labels.includes(document.querySelector('%s')?.innerText.trim())"
                           % TOP_LABEL, arg=sorted(CAT_LABELS), timeout=60_000)
    page.get_by_label("Show why (heatmap)").check()
    page.wait_for_selector("#heatmap img", timeout=60_000)
    first = page.get_attribute("#heatmap img", "src")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "heatmap.png"), full_page=True)
    # Another of the top labels: its own heatmap.
    page.get_by_label("Explain label").click()
    page.get_by_role("option").nth(1).click()
    page.wait_for_function("(first) => document.querySelector('#heatmap img')?.src !== first", arg=first,
                           timeout=60_000)


def test_the_batch_tab_classifies_many_photos_into_a_csv(page, server):
    import csv
    import io

    import requests

    open_page(page, server)
    page.get_by_role("tab", name="Batch").click()
    names = ["cat.jpeg", "coffee.png", "rocket.jpg", "chelsea.png"]
    choose_file(page, "#batch-files button[aria-label=\"Click to upload or drop files\"]", [PHOTOS / n for n in names])
    page.wait_for_selector("#batch-csv a[href]", timeout=120_000)
    assert page.locator("#batch-gallery img").count() == len(names)
    href = page.get_attribute("#batch-csv a[href]", "href")
    rows = list(csv.DictReader(io.StringIO(requests.get(requests.compat.urljoin(server.url + "/", href),
                                                        timeout=30).text)))
    assert [row["file"] for row in rows] == names  # one row per photo
    for row in rows:
        service = requests.post(f"{server.url}/service", data=(PHOTOS / row["file"]).read_bytes(), timeout=60).json()
        assert row["label_1"] == service[0][0]
    page.get_by_label("least confident first").check()
    lowest = min(rows, key=lambda row: float(row["probability_1"]))["file"]
    first_caption = "document.querySelector('#batch-gallery').innerText.split('\\n').find(l => l.includes(': '))"
    page.wait_for_function(f"(name) => {first_caption}?.startsWith(name)", arg=lowest, timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch.png"), full_page=True)


def pictures_whole_at_desktop_and_phone_widths(page) -> None:
    """On a trained Train tab: the confusion matrix and the curve fit their boxes whole (not cropped or zoomed, and
    not under the box's label and buttons), and the summary wraps inside its panel, at 1280 px and at 390 px.
    (tests/test_browser_camera.py trains there and calls this.)"""
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(500)
        for picture in ("#train-matrix", "#train-curve"):
            box = page.evaluate("""(id) => {
                const img = document.querySelector(id + ' img'), block = document.querySelector(id);
                const i = img.getBoundingClientRect(), b = block.getBoundingClientRect();
                const covers = [...block.querySelectorAll('label, button')].filter(e => !e.contains(img))
                    .map(e => e.getBoundingClientRect());
                return {natural: img.naturalWidth / img.naturalHeight, shown: i.width / i.height,
                        inside: i.top >= b.top - 1 && i.bottom <= b.bottom + 1 && i.left >= b.left - 1
                                && i.right <= b.right + 1,
                        uncovered: covers.every(c => c.bottom <= i.top + 1 || c.top >= i.bottom - 1)};
            }""", picture)
            assert box["inside"] and box["uncovered"] and box["shown"] == pytest.approx(box["natural"], rel=0.03), (
                width, picture, box)
        summary = page.evaluate("""() => { const pre = document.querySelector('#train-report pre');
            return pre.scrollWidth <= pre.clientWidth + 1; }""")
        assert summary, f"the summary runs past its panel at {width} px"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"train-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})
